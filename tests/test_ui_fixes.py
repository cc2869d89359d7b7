"""Browser tests for the second round of UI fixes: each bug a user met, and the per-answer stats."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, expect

from tests import ui_helpers
from tests.ui_helpers import API_KEY, ChatPage, _chat_page, contrast, second_tab

server, playwright, browser, chat_page = (
    ui_helpers.server,
    ui_helpers.playwright,
    ui_helpers.browser,
    ui_helpers.chat_page,
)
PHONE = {"width": 390, "height": 844}


def test_two_tabs_sending_into_one_chat_keep_every_message(chat_page: ChatPage) -> None:
    one = chat_page
    one.wait_models()
    one.send("start", model="echo")
    one.wait_answer_done()
    two = second_tab(one)
    two.wait_models()
    expect(two.page.locator(".message-user .message-body")).to_have_text(["start"])
    # Both tabs send while the other is still answering: before, the last save won and a turn was lost.
    one.send("from tab one", model="slow")
    two.send("from tab two", model="slow")
    one.wait_answer_done()
    two.wait_answer_done()
    everything = ["start", "from tab one", "from tab two"]
    for tab in (one, two):
        expect(tab.page.locator(".message-user .message-body")).to_have_text(everything)
        expect(tab.answers()).to_have_count(3)
        expect(tab.answers().last.locator(".message-body")).to_have_text(ui_helpers.SLOW_REPLY)
        tab.page.reload()
        expect(tab.page.locator(".message-user .message-body")).to_have_text(everything)
        expect(tab.answers().locator(".message-body")).to_have_text(
            ["You said: start", ui_helpers.SLOW_REPLY, ui_helpers.SLOW_REPLY]
        )
    # A chat deleted in one tab leaves the other too, and Undo brings it back in both.
    one.page.get_by_role("button", name="Delete chat “start”").click()
    expect(two.page.locator(".chat-title")).to_have_count(0)
    expect(two.page.locator(".message")).to_have_count(0)
    one.page.get_by_role("button", name="Undo").click()
    expect(two.page.locator(".chat-title")).to_have_text(["start"])
    one.assert_console_clean()
    two.assert_console_clean()


def test_tables_scroll_sideways_keep_words_whole_and_align_columns(browser: Browser, server: str) -> None:
    for chat_page in _chat_page(browser, server, PHONE, API_KEY):
        page = chat_page.page
        chat_page.wait_models()
        chat_page.send("planets please", model="table")
        answer = chat_page.wait_answer_done()
        wrap = answer.locator(".table-wrap")
        expect(wrap).to_have_attribute("role", "region")
        assert wrap.evaluate("w => w.scrollWidth > w.clientWidth")  # wider than a phone: it scrolls
        assert page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth") <= 0
        # No word or number is broken across lines ("Plan|et", "139,|820").
        broken = answer.locator("td, th").evaluate_all(
            """cells => cells.filter(cell => {
                const words = cell.textContent.trim().split(/\\s+/);
                const range = document.createRange();
                return [...cell.childNodes].some(node => {
                    range.selectNodeContents(node);
                    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                    return words.length === 1 && tops.size > 1;
                });
            }).map(cell => cell.textContent)"""
        )
        assert broken == []
        aligns = (
            answer.locator("tbody tr")
            .first.locator("td")
            .evaluate_all("cells => cells.map(c => getComputedStyle(c).textAlign)")
        )
        assert aligns[1:4] == ["right", "right", "right"] and aligns[4] == "center"
        assert aligns[0] in ("left", "start")
        page.screenshot(path=str(ui_helpers.ARTIFACTS / "ui-phone-table.png"))
        chat_page.assert_console_clean()


def test_send_without_models_keeps_the_api_key_banner(browser: Browser, server: str) -> None:
    for chat_page in _chat_page(browser, server, {"width": 1280, "height": 800}, "wrong-key"):
        page = chat_page.page
        banner = page.locator("#banner")
        expect(banner).to_contain_text("Incorrect or missing API key")
        page.fill("#prompt", "hello?")
        page.click("#send")
        # Before, this said "no chat model … check the server's configuration" and hid Open settings.
        expect(banner).to_contain_text("Incorrect or missing API key")
        expect(banner).not_to_contain_text("configuration")
        expect(page.get_by_role("button", name="Open settings")).to_be_visible()
        expect(page.locator("#prompt")).to_have_value("hello?")  # nothing was lost
        chat_page.assert_console_clean(allowed=r"status of 401")


def test_temperatures_in_hundredths_are_saved_and_sent(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    for value in ("0.75", "0.05"):
        page.get_by_role("button", name="Settings").click()
        page.get_by_label("Temperature", exact=True).fill(value)
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#settings")).to_be_hidden()
        chat_page.send(f"temperature {value}", model="echo")
        chat_page.wait_answer_done()
        assert chat_page.chat_bodies()[-1]["temperature"] == float(value)
    page.reload()
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_label("Temperature", exact=True)).to_have_value("0.05")
    chat_page.assert_console_clean()


def test_a_phone_keyboard_enter_adds_a_line_and_send_sends(browser: Browser, server: str) -> None:
    for chat_page in _chat_page(browser, server, PHONE, API_KEY, mobile=True):
        page = chat_page.page
        chat_page.wait_models()
        page.select_option("#model", "echo")
        page.fill("#prompt", "line one")
        page.press("#prompt", "Enter")
        page.keyboard.type("line two")
        expect(page.locator("#prompt")).to_have_value("line one\nline two")
        assert chat_page.answers().count() == 0
        page.get_by_role("button", name="Send").tap()
        answer = chat_page.wait_answer_done()
        expect(answer.locator(".message-body")).to_have_text("You said: line one\nline two")
        # Settings can make Enter send on a phone too (an external keyboard).
        page.get_by_role("button", name="Settings").tap()
        enter_sends = page.get_by_label("Enter sends (Shift+Enter adds a line)")
        expect(enter_sends).not_to_be_checked()
        enter_sends.check()
        page.get_by_role("button", name="Save").tap()
        page.fill("#prompt", "sent by enter")
        page.press("#prompt", "Enter")
        expect(chat_page.answers()).to_have_count(2)
        chat_page.assert_console_clean()


def test_an_unsent_draft_survives_a_reload(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.locator("#prompt").press_sequentially("a new chat's draft")
    page.reload()
    expect(page.locator("#prompt")).to_have_value("a new chat's draft")
    page.fill("#prompt", "")
    chat_page.send("the first chat", model="echo")
    chat_page.wait_answer_done()
    page.locator("#prompt").press_sequentially("half a thought")
    page.click("#new-chat")
    expect(page.locator("#prompt")).to_have_value("")
    page.reload()
    page.locator(".chat-open").filter(has_text="the first chat").click()
    expect(page.locator("#prompt")).to_have_value("half a thought")
    chat_page.assert_console_clean()


def test_errors_are_announced_once_and_answers_are_announced(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("hello?", model="broken")
    chat_page.wait_answer_done()
    expect(page.locator("#status")).to_contain_text("Error:")
    expect(page.locator("#announcer")).to_contain_text("The answer failed")
    page.select_option("#model", "echo")
    chat_page.send("are you there")
    chat_page.wait_answer_done()
    expect(page.locator("#announcer")).to_have_text("Answer from echo: You said: are you there.")
    # The old error stays on screen but is no live region: re-rendering the thread does not read it again.
    page.reload()
    expect(page.locator(".message-error").first).to_contain_text("the weights are missing")
    assert page.locator("#thread [role=alert], #thread [aria-live]").count() == 0
    expect(page.locator("#announcer")).to_have_text("")
    chat_page.assert_console_clean(allowed=r"status of 503")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_fields_and_placeholders_have_enough_contrast(browser: Browser, server: str, scheme: str) -> None:
    desktop = {"width": 1280, "height": 800}
    for chat_page in _chat_page(browser, server, desktop, API_KEY, color_scheme=scheme):
        page = chat_page.page
        chat_page.wait_models()
        assert contrast(page, "#prompt", "placeholder") >= 4.5
        assert contrast(page, "#chat-search", "placeholder") >= 4.5
        assert contrast(page, ".composer-box", "border") >= 3
        assert contrast(page, "#chat-search", "border") >= 3
        page.get_by_role("button", name="Settings").click()
        assert contrast(page, "#temperature", "placeholder") >= 4.5
        assert contrast(page, "#temperature", "border") >= 3


def test_each_answer_shows_first_token_time_speed_and_context_used(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("go", model="slow")
    answer = chat_page.wait_answer_done()
    stats = answer.locator(".message-stats")
    expect(stats).to_have_text(
        re.compile(r"^\d+ tokens · [\d.]+ tokens/s · first token \d+\.\d\d s · context \d+ / 4096$")
    )
    text = stats.text_content() or ""
    tokens = int(text.split()[0])
    used = int(re.search(r"context (\d+)", text).group(1))  # type: ignore[union-attr]
    assert used > tokens > 10  # the prompt counts too
    page.reload()
    expect(chat_page.answers().last.locator(".message-stats")).to_have_text(text)  # kept with the chat
    chat_page.assert_console_clean()


def test_code_is_highlighted_and_math_is_drawn(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("formulas and code", model="rich")
    answer = chat_page.wait_answer_done()
    body = answer.locator(".message-body")
    code = body.locator(".code-block code")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(code.locator(".hljs-comment")).to_have_text("# sum")
    keyword, plain = code.evaluate(
        """c => [getComputedStyle(c.querySelector('.hljs-keyword')).color, getComputedStyle(c).color]"""
    )
    assert keyword != plain  # the tokens are coloured
    body.get_by_role("button", name="Copy python code").click()
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == "def add(a, b):\n    return a + b  # sum\n"
    # Inline and display formulas are MathML; "\," survives as a thin space; dollar amounts stay text.
    formulas = body.locator("math")
    expect(formulas).to_have_count(3)
    expect(body.locator("math[display=block]")).to_have_count(1)
    assert "\\" not in (body.text_content() or "")  # no TeX source shows
    assert formulas.nth(1).locator("mtext").first.text_content() == "\u2009"  # the thin space
    expect(body).to_contain_text("Prices stay text: $5 and $10.")
    assert "$" not in (body.locator("p").first.text_content() or "").split("Prices")[0]
    assert body.locator("math").first.evaluate("m => m.getBoundingClientRect().height") > 5  # drawn
    ui_helpers.ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ui_helpers.ARTIFACTS / "ui-desktop-rich.png"))
    chat_page.assert_console_clean()
