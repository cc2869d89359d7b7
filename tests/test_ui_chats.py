"""Browser tests of the chat list: rename, search, dates, undo, export, import, per-chat settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests import ui_helpers
from tests.ui_helpers import API_KEY, LONG_REPLY, ChatPage, _chat_page

server, playwright, browser, chat_page = (
    ui_helpers.server,
    ui_helpers.playwright,
    ui_helpers.browser,
    ui_helpers.chat_page,
)


def _titles(chat_page: ChatPage) -> list[str]:
    return chat_page.page.locator(".chat-title").all_text_contents()


def test_rename_search_dates_and_undo_delete(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    for text in ("apples and pears", "the weather today"):
        page.click("#new-chat")
        chat_page.send(text, model="echo")
        chat_page.wait_answer_done()
    assert _titles(chat_page) == ["the weather today", "apples and pears"]
    # Today's chats show their time.
    expect(page.locator(".chat-date").first).to_have_text(re.compile(r"\d{1,2}:\d\d"))

    page.get_by_role("button", name="Rename chat “apples and pears”").click()
    name = page.get_by_label("Chat name")
    expect(name).to_be_focused()
    name.fill("Fruit")
    name.press("Enter")
    expect(page.locator(".chat-title")).to_have_text(["the weather today", "Fruit"])

    # Search looks in titles and in what was said.
    page.get_by_label("Search chats").fill("pears")
    expect(page.locator(".chat-title")).to_have_text(["Fruit"])
    page.get_by_label("Search chats").fill("nothing like this")
    expect(page.locator(".chat-none")).to_have_text("No chat matches.")
    page.get_by_label("Search chats").fill("")

    page.get_by_role("button", name="Delete chat “Fruit”").click()
    expect(page.locator(".chat-title")).to_have_text(["the weather today"])
    expect(page.locator("#undo")).to_contain_text("Deleted “Fruit”")
    page.get_by_role("button", name="Undo").click()
    expect(page.locator(".chat-title")).to_have_text(["the weather today", "Fruit"])
    expect(page.locator(".message-user .message-body")).to_have_text("apples and pears")
    page.reload()
    expect(page.locator(".chat-title")).to_have_text(["the weather today", "Fruit"])
    page.get_by_role("button", name="Delete chat “the weather today”").click()
    page.reload()  # without Undo the delete stays
    expect(page.locator(".chat-title")).to_have_text(["Fruit"])
    chat_page.assert_console_clean()


def test_other_chats_can_be_used_while_one_streams(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("a quick one", model="echo")
    chat_page.wait_answer_done()
    page.click("#new-chat")
    chat_page.send("a long one", model="endless")
    expect(chat_page.answers().last.locator(".message-body")).to_contain_text("word2")
    busy = page.locator(".chat-open.busy")
    expect(busy).to_have_count(1)
    # Before, the list ignored clicks while an answer streamed.
    page.locator(".chat-open").filter(has_text="a quick one").click()
    expect(page.locator(".message-user .message-body")).to_have_text("a quick one")
    expect(page.locator("#send")).to_be_visible()
    chat_page.send("meanwhile here", model="echo")
    chat_page.wait_answer_done()
    expect(chat_page.answers().last.locator(".message-body")).to_have_text("You said: meanwhile here")
    page.locator(".chat-open").filter(has_text="a long one").click()
    expect(page.locator("#stop")).to_be_visible()
    expect(chat_page.answers().last).to_have_class(re.compile(r"\bpending\b"))
    page.click("#stop")
    answer = chat_page.wait_answer_done()
    partial = (answer.locator(".message-body").text_content() or "").strip()
    assert LONG_REPLY.startswith(partial) and len(partial.split()) > 3
    chat_page.assert_console_clean()


def test_each_chat_keeps_its_model_and_system_prompt(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("first chat", model="echo")
    chat_page.wait_answer_done()
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("System prompt for this chat").fill("Be brief.")
    page.get_by_role("button", name="Save").click()
    page.click("#new-chat")
    chat_page.send("second chat", model="fast")
    chat_page.wait_answer_done()
    page.locator(".chat-open").filter(has_text="first chat").click()
    expect(page.locator("#model")).to_have_value("echo")  # the chat's own model comes back
    chat_page.send("again")
    chat_page.wait_answer_done()
    first_again = chat_page.chat_bodies()[-1]
    assert first_again["model"] == "echo"
    assert first_again["messages"][0] == {"role": "system", "content": "Be brief."}
    page.locator(".chat-open").filter(has_text="second chat").click()
    expect(page.locator("#model")).to_have_value("fast")
    chat_page.send("and here")
    chat_page.wait_answer_done()
    assert chat_page.chat_bodies()[-1]["messages"][0]["role"] == "user"  # no system prompt in this chat
    chat_page.assert_console_clean()


def test_export_and_import_as_json_and_markdown(chat_page: ChatPage, tmp_path: Path) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("export me", model="fast")
    chat_page.wait_answer_done()
    page.get_by_role("button", name="Settings").click()
    with page.expect_download() as markdown_download:
        page.get_by_role("button", name="Export this chat (Markdown)").click()
    markdown = Path(markdown_download.value.path()).read_text()
    assert markdown_download.value.suggested_filename == "export-me.md"
    assert markdown.startswith("# export me\n") and "## You\n\nexport me" in markdown
    assert "## fast\n\n" + ui_helpers.MARKDOWN_REPLY in markdown
    with page.expect_download() as json_download:
        page.get_by_role("button", name="Export all chats (JSON)").click()
    exported = json.loads(Path(json_download.value.path()).read_text())
    [chat] = exported["chats"]
    assert [m["content"] for m in chat["messages"]] == ["export me", ui_helpers.MARKDOWN_REPLY]

    # Import into an empty browser: the chat comes back whole, and importing twice keeps both copies.
    saved = tmp_path / "chats.json"
    saved.write_text(json.dumps(exported))
    page.keyboard.press("Escape")
    page.evaluate("() => { localStorage.clear(); }")
    page.reload()
    expect(page.locator(".chat-none")).to_be_visible()
    for count in (1, 2):
        page.get_by_role("button", name="Settings").click()
        page.locator("#import-chats").set_input_files(str(saved))
        expect(page.locator("#status")).to_have_text("Imported 1 chat.")
        expect(page.locator(".chat-title")).to_have_count(count)
    page.locator(".chat-open").first.click()
    expect(page.locator(".message-user .message-body")).to_have_text("export me")
    expect(chat_page.answers().locator("strong")).to_have_text("bold")
    # A file that is not an export is refused with a message.
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    page.get_by_role("button", name="Settings").click()
    page.locator("#import-chats").set_input_files(str(bad))
    expect(page.locator("#banner")).to_contain_text("Cannot import bad.json")
    chat_page.assert_console_clean()


def test_undo_is_reachable_after_deleting_on_a_phone(browser: Browser, server: str) -> None:
    for chat_page in _chat_page(browser, server, {"width": 390, "height": 844}, API_KEY, mobile=True):
        page = chat_page.page
        chat_page.wait_models()
        page.fill("#prompt", "keep me")
        page.get_by_role("button", name="Send").tap()
        chat_page.wait_answer_done()
        page.get_by_role("button", name="Show chats").tap()
        page.get_by_role("button", name="Delete chat “keep me”").tap()
        undo = page.get_by_role("button", name="Undo")
        expect(undo).to_be_in_viewport()
        expect(undo).to_be_focused()
        undo.tap()
        expect(page.locator(".message-user .message-body")).to_have_text("keep me")
        expect(page.locator("#sidebar")).not_to_be_in_viewport()
        chat_page.assert_console_clean()
