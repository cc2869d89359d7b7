"""Shared pieces of the browser tests: an `ai-stack serve` subprocess with fake models, Chromium, one tab."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, expect, sync_playwright

from tests.conftest import served

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
API_KEY = "ui-test-key"
WAIT_MS = 20_000

MARKDOWN_REPLY = (
    "Here is **bold** text and a list:\n\n- one\n- two\n\n```python\nprint('hello')\n```\n\nThat is all."
)
SLOW_REPLY = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day and the fox was happy. "
    "Everyone watched as it ran across the field, and then it rested in the shade."
)
LONG_REPLY = " ".join(f"word{i}" for i in range(400))
STORY_REPLY = " ".join(
    f"Sentence number {i} of a story that the voice reads aloud, one part after another." for i in range(8)
)
EVIL_REPLY = """Hello <script>window.__pwned = 1</script> there.

<img src=x onerror="window.__pwned = 2">

[a link](javascript:window.__pwned=3) and <a href="javascript:window.__pwned=4">a raw link</a>

<iframe src="javascript:window.__pwned=5"></iframe><svg><script>window.__pwned=6</script></svg>

<div onmouseover="window.__pwned=7" class="evil" style="position:fixed;inset:0">hover me</div>

<form action="javascript:window.__pwned=8"><button>press</button></form>

**still bold**"""


TABLE_REPLY = """| Planet | Moons | Mean distance from the Sun (km) | Orbital period (days) | Discovered by |
|:--|--:|--:|--:|:-:|
| Jupiter | 95 | 778,570,000 | 4,333 | known since antiquity |
| Saturn | 146 | 1,433,530,000 | 10,759 | known since antiquity |
| Neptune | 16 | 4,495,060,000 | 60,190 | Le Verrier and Galle |

Done."""
RICH_REPLY = r"""Energy: $E = mc^2$ and a thin space: $10\,\mathrm{kg}$. Prices stay text: $5 and $10.

$$\int_0^1 x^2\,dx = \frac{1}{3}$$

```python
def add(a, b):
    return a + b  # sum
```
"""
TWO_SENTENCES = "First part of the answer. Second part comes later."


def _toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


THINKING_REPLY = (
    '<think>\nThe user <img src=x onerror="window.__pwned=1"> wants a greeting.\n</think>\n\nHello **there**.'
)

CONFIG = f"""
[server]
api_key = "{API_KEY}"

[[models]]
id = "fast"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(MARKDOWN_REPLY)} }}

[[models]]
id = "echo"
engine = "fake"
source = "fake:"

[[models]]
id = "slow"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(SLOW_REPLY)}, token_delay = 0.06 }}

[[models]]
id = "endless"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(LONG_REPLY)}, token_delay = 0.05 }}

[[models]]
id = "story"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(STORY_REPLY)} }}

[[models]]
id = "evil"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(EVIL_REPLY)} }}

[[models]]
id = "thinker"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(THINKING_REPLY)}, chat_template = "<think> (a thinking template)" }}

[[models]]
id = "broken"
engine = "fake"
source = "fake:"
options = {{ fail_load = "the weights are missing (test)" }}

[[models]]
id = "lazy"
engine = "fake"
source = "fake:"
autoload = false
options = {{ reply = "Loaded and answering.", load_delay = 1.5 }}

[[models]]
id = "table"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(TABLE_REPLY)} }}

[[models]]
id = "rich"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(RICH_REPLY)} }}

[[models]]
id = "twice"
engine = "fake"
source = "fake:"
options = {{ reply = {_toml_string(TWO_SENTENCES)}, token_delay = 0.25 }}

[[models]]
id = "piper-joe"
kind = "speech"
engine = "piper"
source = "embedded:en_US-joe-medium"

[[models]]
id = "tone"
kind = "speech"
engine = "fake-speech"
source = "fake:"
options = {{ voices = ["slow-tone"], sentence_delay = 1.0 }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ai-stack serve` on a free port with fake chat models, an API key and the embedded Piper voice."""
    folder = tmp_path_factory.mktemp("ui")
    config = folder / "ui.toml"
    config.write_text(CONFIG.replace("[server]\n", f'[server]\nhome = "{folder / "home"}"\n'))
    with served(config, timeout=120, all_ready=False) as url:
        yield url


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip(
            "the browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
        )
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--autoplay-policy=no-user-gesture-required",
            "--mute-audio",
        ],
        headless=True,
    )
    yield browser
    browser.close()


@dataclass
class ChatPage:
    """One browser tab on the chat page, with what its console said and which API requests it sent."""

    page: Page
    url: str
    console: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def open(self) -> None:
        self.page.goto(self.url)
        expect(self.page.locator("html")).to_have_attribute("data-ready", "true")

    def wait_models(self) -> None:
        expect(self.page.locator("#model option")).not_to_have_count(0)
        expect(self.page.locator("#model")).to_be_enabled()

    def send(self, text: str, model: str | None = None) -> None:
        if model is not None:
            self.page.select_option("#model", model)
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def answers(self) -> Any:
        return self.page.locator(".message-assistant")

    def wait_answer_done(self, index: int = -1) -> Any:
        answer = self.answers().nth(index) if index >= 0 else self.answers().last
        expect(answer).not_to_have_class(re.compile(r"\bpending\b"), timeout=WAIT_MS)
        expect(self.page.locator("#send")).to_be_visible()
        return answer

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [json_body(r) for r in self.requests if r.url.endswith("/v1/chat/completions")]

    def assert_console_clean(self, allowed: str | None = None) -> None:
        unexpected = [m for m in self.console if not (allowed and re.search(allowed, m))]
        assert unexpected == []


@pytest.fixture
def chat_page(browser: Browser, server: str) -> Iterator[ChatPage]:
    """A fresh browser context (empty localStorage) holding the right API key, on a desktop viewport."""
    yield from _chat_page(browser, server, {"width": 1280, "height": 800}, API_KEY)


def _chat_page(
    browser: Browser,
    server: str,
    viewport: dict[str, int],
    api_key: str,
    init: str = "",
    color_scheme: str = "light",
    mobile: bool = False,
) -> Iterator[ChatPage]:
    context = browser.new_context(
        viewport=viewport,  # type: ignore[arg-type]
        color_scheme=color_scheme,  # type: ignore[arg-type]
        is_mobile=mobile,
        has_touch=mobile,
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    key, settings = "'ai-stack.settings.v1'", json.dumps({"apiKey": api_key})
    context.add_init_script(
        f"if (!localStorage.getItem({key})) localStorage.setItem({key}, {settings!r});" + init
    )
    page = context.new_page()
    ui = _tab(page, server)
    yield ui
    context.close()


def _tab(page: Page, server: str) -> ChatPage:
    ui = ChatPage(page, server + "/")
    page.on("console", lambda m: _on_console(ui, m))
    page.on("pageerror", lambda e: ui.console.append(f"pageerror: {e}"))
    page.on("request", lambda r: ui.requests.append(r) if "/v1/" in r.url else None)
    ui.open()
    return ui


def second_tab(first: ChatPage) -> ChatPage:
    """Another tab of the same browser profile (the same localStorage) on the chat page."""
    return _tab(first.page.context.new_page(), first.url.rstrip("/"))


def _until(page: Page, condition: Callable[[], bool], timeout_ms: int = WAIT_MS) -> None:
    """Wait until condition() holds, letting Playwright deliver the page's events meanwhile."""
    waited = 0
    while not condition():
        assert waited < timeout_ms, "condition not met in time"
        page.wait_for_timeout(50)
        waited += 50


def json_body(request: Request) -> dict[str, Any]:
    """The JSON object a request sent."""
    body = request.post_data_json
    assert isinstance(body, dict), request.url
    return body


def contrast(page: Page, selector: str, what: str) -> float:
    """The WCAG contrast ratio of an element's `what` ("placeholder" or "border") against its background."""
    return float(
        page.evaluate(
            r"""([selector, what]) => {
                const el = document.querySelector(selector);
                const style = getComputedStyle(el);
                const fg = what === 'placeholder'
                    ? getComputedStyle(el, '::placeholder').color : style.borderTopColor;
                let bg = 'rgba(0, 0, 0, 0)';
                for (let node = el; node && /rgba\(.*, 0\)|transparent/.test(bg); node = node.parentElement) {
                    bg = getComputedStyle(node).backgroundColor;
                }
                const lum = (css) => {
                    const [r, g, b] = css.match(/[\d.]+/g).slice(0, 3).map(Number).map((v) => {
                        v /= 255;
                        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
                    });
                    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
                };
                const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
                return (a + 0.05) / (b + 0.05);
            }""",
            [selector, what],
        )
    )


def _on_console(ui: ChatPage, message: ConsoleMessage) -> None:
    if message.type in ("error", "warning"):
        ui.console.append(f"{message.type}: {message.text}")
