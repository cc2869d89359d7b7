"""Browser tests of read-aloud: it follows the streaming answer, one player, speed, a preparing state."""

from __future__ import annotations

import re

from playwright.sync_api import Request, expect

from tests import ui_helpers
from tests.ui_helpers import WAIT_MS, ChatPage, _until, json_body

server, playwright, browser, chat_page = (
    ui_helpers.server,
    ui_helpers.playwright,
    ui_helpers.browser,
    ui_helpers.chat_page,
)
PLAYING = """() => {
    const a = document.querySelector('#player-audio');
    return !a.paused && !a.error && a.readyState >= 2 && a.currentTime > 0;
}"""


def _speech(chat_page: ChatPage) -> list[Request]:
    return [r for r in chat_page.requests if r.url.endswith("/v1/audio/speech")]


def test_markdown_becomes_speakable_blocks_and_sentences(chat_page: ChatPage) -> None:
    result = chat_page.page.evaluate(
        """async () => {
            const { renderMarkdown, speakableBlocks } = await import('./static/js/markdown.js');
            const { splitSentences, finishedSentences } = await import('./static/js/speech.js');
            const md = '# Plan\\n\\nIntro text here\\n\\n- first item\\n- second item!\\n\\n'
                + '| Name | Size |\\n|--|--:|\\n| Mars | 3,390 km |\\n\\n```js\\nlet x = 1;\\n```\\n\\n'
                + 'Call Dr. Smith at 3.5 p.m. today. Then rest';
            const blocks = speakableBlocks(renderMarkdown(md));
            return {
                blocks,
                sentences: splitSentences('It costs 3.50 dollars, e.g. cheap. Is it? Yes! “Quoted.” Next'),
                partial: finishedSentences(blocks, false).at(-1),
            };
        }"""
    )
    assert result["blocks"] == [
        "Plan.",
        "Intro text here.",
        "first item.",
        "second item!",
        "Name, Size.",
        "Mars, 3,390 km.",
        "A js code block, not read.",
        "Call Dr. Smith at 3.5 p.m. today. Then rest.",
    ]
    assert result["sentences"] == [
        "It costs 3.50 dollars, e.g. cheap.",
        "Is it?",
        "Yes!",
        "“Quoted.”",
        "Next",
    ]
    # While the answer streams, the last sentence of the last block may still grow: it waits.
    assert result["partial"] == "Call Dr. Smith at 3.5 p.m. today."
    chat_page.assert_console_clean()


def test_auto_read_starts_on_the_first_sentence_while_the_answer_streams(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.get_by_label("Auto-read").check()
    finished: list[str] = []
    page.on("requestfinished", lambda r: finished.append(r.url.rsplit("/", 2)[-1]))
    chat_page.send("two parts", model="twice")
    answer = chat_page.answers().last
    expect(page.locator("#player")).to_be_visible()
    # The first sentence is sent to the voice while the model is still writing the second.
    _until(page, lambda: len(_speech(chat_page)) >= 1)
    assert "completions" not in finished
    expect(answer).to_have_class(re.compile(r"\bpending\b"))
    page.wait_for_function(PLAYING, timeout=WAIT_MS)
    chat_page.wait_answer_done()
    _until(page, lambda: len(_speech(chat_page)) == 2)
    assert [json_body(r)["input"] for r in _speech(chat_page)] == [
        "First part of the answer.",
        "Second part comes later.",
    ]
    expect(answer.get_by_role("button", name="Stop reading")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function("() => document.querySelector('#player-audio').ended", timeout=WAIT_MS)
    expect(page.locator("#player")).to_be_hidden()  # the end of the answer ends the reading
    expect(answer.get_by_role("button", name="Read aloud")).to_be_visible()
    chat_page.assert_console_clean()


def test_one_player_at_a_time_with_a_preparing_state_and_speed(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("a story", model="story")
    chat_page.wait_answer_done()
    chat_page.send("and another", model="slow")
    chat_page.wait_answer_done()
    first, second = chat_page.answers().first, chat_page.answers().last
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url) if "/audio/speech" in r.url else None)
    # A slow voice: the player says it is preparing until the first audio arrives.
    page.select_option("#voice", "tone\u001fslow-tone")
    first.get_by_role("button", name="Read aloud").click()
    expect(page.locator("#player-state")).to_have_text("Preparing audio…")
    expect(first.locator(".read-aloud")).to_have_text("Preparing audio…")
    ui_helpers.ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ui_helpers.ARTIFACTS / "ui-desktop-preparing.png"))
    expect(page.locator("#player-state")).to_have_text("Reading aloud", timeout=WAIT_MS)
    page.wait_for_function(PLAYING, timeout=WAIT_MS)

    page.select_option("#speech-rate", "1.5")
    assert page.evaluate("() => document.querySelector('#player-audio').playbackRate") == 1.5

    # Reading the other answer stops the first: one player, one pressed button.
    second.get_by_role("button", name="Read aloud").click()
    expect(first.locator(".read-aloud")).to_have_text("Read aloud")
    expect(first.locator(".read-aloud")).to_have_attribute("aria-pressed", "false")
    expect(second.locator(".read-aloud")).to_have_attribute("aria-pressed", "true")
    assert page.locator("audio").count() == 1
    _until(page, lambda: bool(failed))  # the first answer's speech request was cancelled
    page.wait_for_function(PLAYING, timeout=WAIT_MS)
    inputs = [json_body(r)["input"] for r in _speech(chat_page)]
    assert inputs[0].startswith("Sentence number 0")
    assert "The quick brown fox jumps over the lazy dog." in inputs
    assert page.evaluate("() => document.querySelector('#player-audio').playbackRate") == 1.5
    page.get_by_role("button", name="Stop reading").first.click()
    expect(page.locator("#player")).to_be_hidden()
    assert page.evaluate("() => document.querySelector('#player-audio').paused")
    page.reload()
    expect(page.locator("#speech-rate")).to_have_value("1.5")  # the speed is remembered
    chat_page.assert_console_clean()
