"""The browser chat UI in a real headless Chromium against a real `ai-stack serve` subprocess."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests import ui_helpers
from tests.ui_helpers import (
    API_KEY,
    ARTIFACTS,
    LONG_REPLY,
    MARKDOWN_REPLY,
    SLOW_REPLY,
    STORY_REPLY,
    WAIT_MS,
    ChatPage,
    _chat_page,
    _until,
    json_body,
)

# The fixtures this module uses, shared with the other browser test modules.
server, playwright, browser, chat_page = (
    ui_helpers.server,
    ui_helpers.playwright,
    ui_helpers.browser,
    ui_helpers.chat_page,
)


# ---------------------------------------------------------------------------- the page itself


def test_page_is_served_with_a_strict_content_security_policy(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "object-src 'none'" in csp
    scripts = re.findall(r"<script\b[^>]*>", page.text)
    assert scripts and all("src=" in tag for tag in scripts)  # no inline script: the CSP would block it
    assert "style=" not in page.text
    for path, kind in [
        ("static/js/app.js", "javascript"),
        ("static/vendor/marked/marked.esm.js", "javascript"),
        ("static/vendor/dompurify/purify.es.js", "javascript"),
        ("static/app.css", "text/css"),
        ("static/favicon.svg", "image/svg+xml"),
    ]:
        asset = httpx.get(f"{server}/{path}")
        assert asset.status_code == 200, path
        assert kind in asset.headers["content-type"], path
        assert asset.headers["cache-control"] == "no-cache" and asset.headers["etag"], path
        again = httpx.get(f"{server}/{path}", headers={"if-none-match": asset.headers["etag"]})
        assert again.status_code == 304, path  # revalidation is cheap
    # The API key guards /v1 only: the page and its files load without it.
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/static/missing.js").status_code == 404


def test_event_stream_parser_and_speech_splitter_in_the_browser(chat_page: ChatPage) -> None:
    # Events split anywhere (inside a UTF-8 character, between \r and \n) come out whole and in order.
    events = chat_page.page.evaluate(
        r"""async () => {
            const { serverSentEvents } = await import('./static/js/api.js');
            const bytes = new TextEncoder().encode(
                'data: {"a": "h\u00e9llo \u2603"}\n\n: comment\n\ndata: two\r\n\r\n'
                + 'data: x\ndata: y\n\ndata: [DONE]\n\n');
            const body = new ReadableStream({ start(c) {
                for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3));
                c.close();
            } });
            const out = [];
            for await (const data of serverSentEvents(body)) out.push(data);
            return out;
        }"""
    )
    assert events == ['{"a": "h\u00e9llo \u2603"}', "two", "x\ny", "[DONE]"]
    pieces = chat_page.page.evaluate(
        """async () => {
            const { splitText } = await import('./static/js/speech.js');
            return splitText('A fairly short sentence here. '.repeat(400));
        }"""
    )
    assert len(pieces) > 1 and all(0 < len(p) <= 4000 for p in pieces)
    assert all(p.endswith(".") for p in pieces)  # cut at sentence ends
    assert " ".join(pieces) == ("A fairly short sentence here. " * 400).strip()
    chat_page.assert_console_clean()


# ---------------------------------------------------------------------------- chatting


def test_streamed_answer_appears_in_steps_and_enter_sends(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.select_option("#model", "slow")
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    assert chat_page.answers().count() == 0  # Shift+Enter only added a line
    page.press("#prompt", "Enter")

    expect(page.locator(".message-user .message-body")).to_have_text("first line\nsecond line")
    answer = chat_page.answers().last
    body = answer.locator(".message-body")
    # Part of the answer is on screen while the rest is still being generated.
    page.wait_for_function(
        """() => {
            const a = [...document.querySelectorAll('.message-assistant')].pop();
            const text = a.querySelector('.message-body').textContent;
            return a.classList.contains('pending') && text.startsWith('The quick') && text.length > 12;
        }""",
        timeout=WAIT_MS,
    )
    partial = body.text_content() or ""
    assert 0 < len(partial) < len(SLOW_REPLY)
    expect(page.locator("#stop")).to_be_visible()
    chat_page.wait_answer_done()
    expect(body).to_have_text(SLOW_REPLY)
    expect(answer.locator(".message-stats")).to_contain_text(re.compile(r"\d+ tokens · [\d.]+ tokens/s"))
    expect(page.locator("#status")).to_contain_text("tokens/s")
    expect(page.locator("#prompt")).to_be_focused()

    [sent] = chat_page.chat_bodies()
    assert sent["model"] == "slow" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "first line\nsecond line"}]
    chat_page.assert_console_clean()


def test_markdown_is_rendered_with_a_copy_button_on_code(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("show me markdown", model="fast")
    answer = chat_page.wait_answer_done()
    expect(answer.locator(".message-body strong")).to_have_text("bold")
    expect(answer.locator(".message-body li")).to_have_text(["one", "two"])
    block = answer.locator(".code-block")
    expect(block.locator(".code-bar")).to_contain_text("python")
    expect(block.locator("pre code")).to_have_text("print('hello')\n")
    block.get_by_role("button", name="Copy python code").click()
    expect(block.locator(".copy-code")).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == "print('hello')\n"
    answer.get_by_role("button", name="Copy answer").click()
    assert page.evaluate("() => navigator.clipboard.readText()") == MARKDOWN_REPLY
    chat_page.assert_console_clean()


def test_malicious_markdown_runs_nothing(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("say something nasty", model="evil")
    answer = chat_page.wait_answer_done()
    body = answer.locator(".message-body")
    expect(body.locator("strong")).to_have_text("still bold")
    assert body.locator("script, iframe, img, svg, form, [onerror], [onmouseover], [style]").count() == 0
    hrefs = body.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert all(not (h or "").lower().startswith("javascript:") for h in hrefs)
    body.get_by_text("hover me").hover()
    for link in body.locator("a").all():
        link.click()
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-ready", "true")
    expect(chat_page.answers().last.locator("strong")).to_have_text("still bold")
    assert page.evaluate("() => window.__pwned") is None
    assert len(page.context.pages) == 1  # no link opened anything
    # Chromium reports the handlers and styles it met while DOMPurify parsed the answer in an inert
    # document: the Content-Security-Policy refused them there too. Nothing else may be logged.
    chat_page.assert_console_clean(allowed=r"violates the following Content Security Policy directive")


def test_stop_aborts_a_long_answer_and_the_page_stays_usable(chat_page: ChatPage) -> None:
    page = chat_page.page
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.failure or "") if "/chat/" in r.url else None)
    chat_page.wait_models()
    chat_page.send("tell me everything", model="endless")
    answer = chat_page.answers().last
    expect(answer.locator(".message-body")).to_contain_text("word3", timeout=WAIT_MS)
    page.click("#stop")
    chat_page.wait_answer_done()
    expect(answer.locator(".message-stats")).to_contain_text("stopped")
    partial = answer.locator(".message-body").text_content() or ""
    assert partial and LONG_REPLY.startswith(partial.strip()) and len(partial.strip()) < len(LONG_REPLY)
    _until(page, lambda: bool(failed))
    assert "ABORTED" in failed[0].upper()  # the browser cut the connection: the server stops
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#prompt")).to_be_focused()
    expect(answer.get_by_role("button", name="Retry")).to_be_visible()

    chat_page.send("and now briefly", model="fast")
    chat_page.wait_answer_done()
    expect(chat_page.answers().last.locator("strong")).to_have_text("bold")
    # The stopped answer's text went to the model as history, the stopped part included.
    assert chat_page.chat_bodies()[-1]["messages"][1] == {"role": "assistant", "content": partial.strip()}
    chat_page.assert_console_clean()


def test_escape_stops_too(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("go on", model="endless")
    expect(chat_page.answers().last.locator(".message-body")).to_contain_text("word2", timeout=WAIT_MS)
    page.keyboard.press("Escape")
    answer = chat_page.wait_answer_done()
    expect(answer.locator(".message-stats")).to_contain_text("stopped")
    chat_page.assert_console_clean()


def test_switching_model_uses_it_for_the_next_request(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("first question", model="fast")
    chat_page.wait_answer_done()
    chat_page.send("second question", model="echo")
    answer = chat_page.wait_answer_done()
    expect(answer.locator(".message-body")).to_have_text("You said: second question")
    expect(answer.locator(".message-role")).to_have_text("echo")
    expect(chat_page.answers().first.locator(".message-role")).to_have_text("fast")
    assert [b["model"] for b in chat_page.chat_bodies()] == ["fast", "echo"]
    page.reload()
    chat_page.wait_models()
    expect(page.locator("#model")).to_have_value("echo")  # the choice is remembered
    chat_page.assert_console_clean()


def test_reload_keeps_conversations_and_new_chat_starts_another(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("remember me", model="echo")
    chat_page.wait_answer_done()
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-ready", "true")
    expect(page.locator(".message-user .message-body")).to_have_text("remember me")
    expect(chat_page.answers().locator(".message-body")).to_have_text("You said: remember me")
    expect(page.locator(".chat-title")).to_have_text(["remember me"])

    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    chat_page.send("another topic", model="echo")
    chat_page.wait_answer_done()
    expect(page.locator(".chat-title")).to_have_text(["another topic", "remember me"])
    assert chat_page.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "another topic"}]

    page.locator(".chat-open").filter(has_text="remember me").click()
    expect(page.locator(".message-user .message-body")).to_have_text("remember me")
    expect(page.locator(".chat-open[aria-current=true] .chat-title")).to_have_text("remember me")
    page.get_by_role("button", name="Delete chat “another topic”").click()
    expect(page.locator(".chat-title")).to_have_text(["remember me"])
    page.reload()
    expect(page.locator(".chat-title")).to_have_text(["remember me"])
    chat_page.assert_console_clean()


def test_settings_are_sent_with_each_request(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.get_by_role("button", name="Settings").click()
    expect(page.locator("#settings")).to_be_visible()
    page.get_by_label("System prompt", exact=True).fill("Answer like a pirate.")
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("Max tokens").fill("64")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#settings")).to_be_hidden()
    chat_page.send("ahoy", model="echo")
    chat_page.wait_answer_done()
    sent = chat_page.chat_bodies()[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 64
    page.reload()
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_label("System prompt", exact=True)).to_have_value("Answer like a pirate.")
    page.keyboard.press("Escape")
    expect(page.locator("#settings")).to_be_hidden()
    chat_page.assert_console_clean()


# ---------------------------------------------------------------------------- model states and errors


def test_a_loading_model_shows_loading_and_then_answers(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.select_option("#model", "lazy")
    expect(page.locator("#model-state")).to_have_text("not loaded")
    chat_page.send("are you there?")
    answer = chat_page.answers().last
    expect(answer.locator(".typing")).to_contain_text("lazy is loading")
    expect(page.locator("#model-state")).to_have_text("loading…")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-desktop-loading.png"))
    expect(page.locator("#model-state")).to_have_text("ready", timeout=WAIT_MS)
    chat_page.wait_answer_done()
    expect(answer.locator(".message-body")).to_have_text("Loaded and answering.")
    expect(answer.locator(".message-error")).to_be_hidden()
    # The browser itself logs each 503 it got while the model loaded; nothing else may appear.
    chat_page.assert_console_clean(allowed=r"status of 503")


def test_a_server_error_is_shown_with_its_message(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.select_option("#model", "broken")
    expect(page.locator("#model-state")).to_contain_text("failed: the weights are missing (test)")
    chat_page.send("hello?")
    answer = chat_page.wait_answer_done()
    error = answer.locator(".message-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("the weights are missing (test)")
    expect(page.locator("#status")).to_contain_text("Error:")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-desktop-error.png"))
    # Retry asks again with the model picked now; the failed turn is not sent back to the model.
    page.select_option("#model", "fast")
    answer.get_by_role("button", name="Retry").click()
    answer = chat_page.wait_answer_done()
    expect(answer.locator(".message-body strong")).to_have_text("bold")
    expect(page.locator(".message-error:visible")).to_have_count(0)
    expect(page.locator(".message")).to_have_count(2)
    retried = chat_page.chat_bodies()[-1]
    assert retried["model"] == "fast" and retried["messages"] == [{"role": "user", "content": "hello?"}]
    expect(answer.get_by_role("button", name="Retry")).to_be_hidden()
    chat_page.assert_console_clean(allowed=r"status of 503")


def test_a_wrong_api_key_is_reported_and_fixed_in_settings(browser: Browser, server: str) -> None:
    for chat_page in _chat_page(browser, server, {"width": 1280, "height": 800}, "wrong-key"):
        page = chat_page.page
        banner = page.locator("#banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("Incorrect or missing API key")
        page.get_by_role("button", name="Open settings").click()
        page.get_by_label("API key").fill(API_KEY)
        page.get_by_role("button", name="Save").click()
        expect(banner).to_be_hidden()
        chat_page.wait_models()
        chat_page.send("with the right key", model="echo")
        chat_page.wait_answer_done()
        chat = [r for r in chat_page.requests if r.url.endswith("/v1/chat/completions")]
        assert [r.headers["authorization"] for r in chat] == [f"Bearer {API_KEY}"]
        chat_page.assert_console_clean(allowed=r"status of 401")


# ---------------------------------------------------------------------------- read-aloud


AUDIO_PLAYING = """() => {
    const a = document.querySelector('#player-audio');
    return a && a.checkVisibility() && !a.error && a.readyState >= 2 && a.currentTime > 0
        && a.src.startsWith('blob:');
}"""
AUDIO_COMPLETE = """() => {
    const a = document.querySelector('#player-audio');
    return a && Number.isFinite(a.duration) && a.duration > 0.5;
}"""


def test_read_aloud_streams_audio_that_plays_before_synthesis_ends(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    expect(page.locator("#voice-picker")).to_be_visible()
    expect(page.locator("#voice")).to_have_value("piper-joe\u001fen_US-joe-medium")
    chat_page.send("tell me a story", model="story")
    answer = chat_page.wait_answer_done()
    events: list[str] = []
    page.on("requestfinished", lambda r: events.append("speech done") if "/audio/speech" in r.url else None)
    page.expose_function("noteAudio", lambda name: events.append(name))
    page.evaluate(
        "() => document.querySelector('#player-audio')"
        ".addEventListener('playing', () => window.noteAudio('playing'), {once: true})"
    )
    answer.get_by_role("button", name="Read aloud").click()
    expect(answer.get_by_role("button", name="Stop reading")).to_be_visible()
    page.wait_for_function(AUDIO_PLAYING, timeout=WAIT_MS)
    page.wait_for_function(AUDIO_COMPLETE, timeout=3 * WAIT_MS)  # a busy machine synthesizes slowly
    _until(page, lambda: events.count("speech done") == 2)
    # MediaSource played the first sentence while the server was still synthesizing the rest.
    assert events.index("playing") < events.index("speech done", events.index("speech done") + 1)
    first, rest = [json_body(r) for r in chat_page.requests if r.url.endswith("/v1/audio/speech")]
    assert first["model"] == "piper-joe" and first["voice"] == "en_US-joe-medium"
    assert first["response_format"] == "mp3"
    # The first request holds one sentence so that the voice starts soon; the second the rest.
    sentences = STORY_REPLY.replace(". ", ".\n").split("\n")
    assert first["input"] == sentences[0] and rest["input"] == " ".join(sentences[1:])
    answer.get_by_role("button", name="Stop reading").click()
    expect(answer.get_by_role("button", name="Read aloud")).to_be_visible()
    expect(page.locator("#player")).to_be_hidden()
    assert page.evaluate("() => document.querySelector('#player-audio').paused")
    chat_page.assert_console_clean()


def test_read_aloud_without_media_source_plays_a_blob(browser: Browser, server: str) -> None:
    no_mse = "Object.defineProperty(window, 'MediaSource', {value: undefined});"
    for chat_page in _chat_page(browser, server, {"width": 1280, "height": 800}, API_KEY, no_mse):
        page = chat_page.page
        chat_page.wait_models()
        chat_page.send("short answer please", model="slow")
        answer = chat_page.wait_answer_done()
        answer.get_by_role("button", name="Read aloud").click()
        page.wait_for_function(AUDIO_PLAYING, timeout=WAIT_MS)
        page.wait_for_function(AUDIO_COMPLETE, timeout=WAIT_MS)
        assert page.evaluate("() => window.MediaSource") is None
        assert page.evaluate("() => document.querySelector('#player-audio').play().then(() => true)")
        chat_page.assert_console_clean()


def test_auto_read_speaks_each_new_answer_without_code(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    page.get_by_label("Auto-read").check()
    chat_page.send("markdown please", model="fast")
    chat_page.wait_answer_done()
    page.wait_for_function(AUDIO_PLAYING, timeout=WAIT_MS)
    _until(page, lambda: "That is all." in " ".join(_spoken(chat_page)))
    spoken = " ".join(_spoken(chat_page))
    # Blocks end with a pause (a full stop), the code is announced, not read out.
    assert spoken == "Here is bold text and a list: one. two. A python code block, not read. That is all."
    page.reload()
    expect(page.get_by_label("Auto-read")).to_be_checked()
    chat_page.assert_console_clean()


def _spoken(chat_page: ChatPage) -> list[str]:
    return [json_body(r)["input"] for r in chat_page.requests if r.url.endswith("/v1/audio/speech")]


# ---------------------------------------------------------------------------- layout and access


def test_controls_are_labelled_buttons_reachable_by_keyboard(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("hi", model="fast")
    chat_page.wait_answer_done()
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('button, select, textarea, input, audio')]
            .filter(el => el.checkVisibility())
            .filter(el => !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
            .map(el => el.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    assert page.locator("[onclick], div[role=button], span[role=button]").count() == 0
    page.reload()  # nothing focused: the first Tab lands on the skip link
    expect(page.locator("html")).to_have_attribute("data-ready", "true")
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_be_focused()
    outline = page.evaluate(
        "() => { const b = document.querySelector('#new-chat'); b.focus();"
        " return getComputedStyle(b).outlineStyle; }"
    )
    assert outline != "none"  # keyboard focus is visible
    chat_page.assert_console_clean()


@pytest.mark.parametrize(
    ("name", "viewport", "scheme"),
    [
        ("desktop", {"width": 1280, "height": 800}, "light"),
        ("phone", {"width": 390, "height": 844}, "light"),
        ("phone-dark", {"width": 390, "height": 844}, "dark"),
    ],
)
def test_screenshots_and_layout_at_desktop_and_phone_width(
    browser: Browser, server: str, name: str, viewport: dict[str, int], scheme: str
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for chat_page in _chat_page(browser, server, viewport, API_KEY, color_scheme=scheme):
        page = chat_page.page
        chat_page.wait_models()
        page.screenshot(path=str(ARTIFACTS / f"ui-{name}-empty.png"))
        chat_page.send("Show me formulas and code", model="rich")
        chat_page.wait_answer_done()
        chat_page.send("And a slower answer, please", model="slow")
        chat_page.wait_answer_done()
        chat_page.answers().first.get_by_role("button", name="Read aloud").click()
        page.wait_for_function(AUDIO_PLAYING, timeout=WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / f"ui-{name}-chat.png"))
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0  # nothing sticks out sideways
        expect(page.locator("#prompt")).to_be_in_viewport()
        expect(page.locator("#model")).to_be_in_viewport()
        sidebar = page.locator("#sidebar")
        if name.startswith("phone"):
            expect(sidebar).not_to_be_in_viewport()
            page.get_by_role("button", name="Show chats").click()
            expect(page.locator("#new-chat")).to_be_in_viewport()
            slid_in = "() => document.getElementById('sidebar').getBoundingClientRect().left === 0"
            page.wait_for_function(slid_in)  # the drawer's slide has ended
            page.screenshot(path=str(ARTIFACTS / f"ui-{name}-chats.png"))
            page.keyboard.press("Escape")
            expect(sidebar).not_to_be_in_viewport()
            expect(page.get_by_role("button", name="Show chats")).to_be_focused()
        else:
            expect(sidebar).to_be_in_viewport()
        page.get_by_role("button", name="Settings").click()
        page.screenshot(path=str(ARTIFACTS / f"ui-{name}-settings.png"))
        chat_page.assert_console_clean()


def test_reasoning_is_shown_folded_as_plain_text_above_the_answer(chat_page: ChatPage) -> None:
    page = chat_page.page
    chat_page.wait_models()
    chat_page.send("greet me", model="thinker")
    answer = chat_page.wait_answer_done()
    expect(answer.locator(".message-body strong")).to_have_text("there")
    expect(answer.locator(".message-body")).not_to_contain_text("wants a greeting")
    reasoning = answer.locator(".message-reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning.locator("summary")).to_have_text("Thought")
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-text")).to_have_text(
        'The user <img src=x onerror="window.__pwned=1"> wants a greeting.'
    )
    assert reasoning.locator("img").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    chat_page.assert_console_clean()
