"""Browser tests of message versions: edit and resend, regenerate any answer, continue a cut answer."""

from __future__ import annotations

from playwright.sync_api import expect

from tests import ui_helpers
from tests.ui_helpers import MARKDOWN_REPLY, STORY_REPLY, ChatPage

server, playwright, browser, chat_page = (
    ui_helpers.server,
    ui_helpers.playwright,
    ui_helpers.browser,
    ui_helpers.chat_page,
)


def _thread(chat_page: ChatPage) -> list[str]:
    return [t.strip() for t in chat_page.page.locator(".message .message-body").all_text_contents()]


def test_edit_and_resend_keeps_the_old_branch(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("one", model="echo")
    chat_page.wait_answer_done()
    chat_page.send("two")
    chat_page.wait_answer_done()
    first = page.locator(".message-user").first
    first.hover()
    first.get_by_role("button", name="Edit and resend").click()
    box = first.get_by_label("Edit message")
    expect(box).to_be_focused()
    box.fill("uno")
    first.get_by_role("button", name="Save and send").click()
    chat_page.wait_answer_done()
    assert _thread(chat_page) == ["uno", "You said: uno"]
    assert chat_page.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "uno"}]
    versions = page.locator(".message-user").first.locator(".versions")
    expect(versions.locator(".version-label")).to_have_text("2 / 2")

    versions.get_by_role("button", name="Previous version").click()
    assert _thread(chat_page) == ["one", "You said: one", "two", "You said: two"]
    expect(versions.locator(".version-label")).to_have_text("1 / 2")
    page.reload()
    expect(page.locator(".message .message-body")).to_have_count(4)  # the branch shown is kept
    page.locator(".message-user").first.get_by_role("button", name="Next version").click()
    assert _thread(chat_page) == ["uno", "You said: uno"]
    # The conversation goes on from the branch on screen.
    chat_page.send("tres")
    chat_page.wait_answer_done()
    assert [m["content"] for m in chat_page.chat_bodies()[-1]["messages"]] == ["uno", "You said: uno", "tres"]
    chat_page.assert_console_clean()


def test_regenerate_any_answer_and_flip_between_them(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("first", model="fast")
    chat_page.wait_answer_done()
    chat_page.send("second", model="echo")
    chat_page.wait_answer_done()
    # Regenerate the first answer (not the last) with another model: what followed stays in its branch.
    page.select_option("#model", "echo")
    first_answer = chat_page.answers().first
    first_answer.get_by_role("button", name="Regenerate").click()
    chat_page.wait_answer_done()
    assert _thread(chat_page) == ["first", "You said: first"]
    expect(first_answer.locator(".message-role")).to_have_text("echo")
    assert chat_page.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "first"}]
    first_answer.get_by_role("button", name="Previous version").click()
    expect(chat_page.answers().first.locator(".message-body strong")).to_have_text("bold")
    assert len(_thread(chat_page)) == 4 and _thread(chat_page)[3] == "You said: second"
    expect(chat_page.answers().first.locator(".message-role")).to_have_text("fast")
    chat_page.answers().first.get_by_role("button", name="Copy answer").click()
    assert page.evaluate("() => navigator.clipboard.readText()") == MARKDOWN_REPLY
    chat_page.assert_console_clean()


def test_continue_a_cut_answer(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("Max tokens").fill("5")
    page.get_by_role("button", name="Save").click()
    chat_page.send("tell me a story", model="story")
    answer = chat_page.wait_answer_done()
    expect(answer.locator(".message-stats")).to_contain_text("cut at max tokens")
    cut = (answer.locator(".message-body").text_content() or "").strip()
    assert STORY_REPLY.startswith(cut) and len(cut.split()) == 5
    answer.get_by_role("button", name="Continue this answer").click()
    answer = chat_page.wait_answer_done()
    longer = (answer.locator(".message-body").text_content() or "").strip()
    assert longer.startswith(cut) and len(longer) > len(cut)
    expect(chat_page.answers()).to_have_count(1)  # the same answer grew
    body = chat_page.chat_bodies()[-1]
    # The cut answer is the last message, left open (continue_final_message): the model goes on from it.
    assert body["messages"][-1] == {"role": "assistant", "content": cut}
    assert body["continue_final_message"] is True
    chat_page.assert_console_clean()
