"""The engine table: it drives config validation, loading and the CLI; a new engine is a module and a row."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ai_stack.config import ModelSpec
from ai_stack.engines.catalog import ENGINES, EngineInfo, EngineOptions
from tests.conftest import wait_ready

# A whole engine, as a new backend would be written: one module with a load() function.
ECHO_ENGINE = """
from __future__ import annotations

from ai_stack.engines.base import Generation, Piece, Prompt
from ai_stack.engines.catalog import EngineOptions


class EchoOptions(EngineOptions):
    prefix: str = "echo:"


class EchoEngine:
    engine_kind = "echo"
    device = "cpu"
    context_length = 256
    chat_template = None
    vocab_size = None

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def token_id(self, text):
        return None

    def render(self, messages, template_kwargs):
        text = messages[-1]["content"]
        return Prompt(token_ids=list(range(len(text.split()))), text=text)

    def generate(self, prompt, params, cancel, emit):
        words = [self.prefix, *prompt.text.split()][: params.max_tokens]
        for word in words:
            emit(Piece(word + " "))
        return Generation("stop", len(words))

    def close(self):
        pass


def load(spec, config, options: EchoOptions) -> EchoEngine:
    return EchoEngine(options.prefix)
"""


def test_every_row_names_a_loader_and_an_options_model() -> None:
    """Each engine's loader imports lazily from its own module; its options refuse unknown keys."""
    for name, info in ENGINES.items():
        module, _, function = info.loader.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        assert issubclass(info.options, EngineOptions)
        with pytest.raises(ValidationError):
            info.options.model_validate({"no_such_option": 1})


@pytest.mark.parametrize(
    ("engine", "kind", "options", "needle"),
    [
        (
            "transformers",
            "chat",
            {"max_batch": 0},
            "option 'max_batch': Input should be greater than or equal to 1",
        ),
        (
            "llamacpp",
            "chat",
            {"batch_invariant": "yes"},
            "option 'batch_invariant': Input should be a valid boolean",
        ),
        ("auto", "chat", {"paralel": 2}, "unknown option 'paralel' for engine 'auto'"),
        ("piper", "speech", {"noise_scale": "0"}, "option 'noise_scale'"),
        ("kokoro-onnx", "speech", {"voice_map": {"alloy": 3}}, "option 'voice_map.alloy'"),
        ("kokoro", "speech", {"voices": "x"}, "unknown option 'voices' for engine 'kokoro'"),
        ("fake", "chat", {"reply": 7}, "option 'reply'"),
    ],
)
def test_bad_options_name_the_model_and_the_key(
    engine: str, kind: str, options: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec(id="m1", kind=kind, engine=engine, source="x", options=options)
    assert "model 'm1': " + needle in str(caught.value)


def test_good_options_pass_and_keep_the_config_as_written() -> None:
    spec = ModelSpec(id="m", engine="auto", source="x", options={"parallel": 2, "max_batch": 4})
    assert spec.options == {"parallel": 2, "max_batch": 4}
    ModelSpec(id="s", kind="speech", engine="piper", source="x", options={"noise_scale": 0, "noise_w": 0.5})


def test_kind_follows_the_table() -> None:
    with pytest.raises(ValidationError, match="engine 'piper' serves speech models"):
        ModelSpec(id="m", kind="chat", engine="piper", source="x")
    with pytest.raises(ValidationError, match="engine 'auto' serves chat models"):
        ModelSpec(id="m", kind="speech", engine="auto", source="x")
    with pytest.raises(ValidationError, match="unknown engine 'vllm'"):
        ModelSpec(id="m", engine="vllm", source="x")


def test_a_new_engine_is_one_module_and_one_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_client: Any
) -> None:
    """Registered by a row, the module's engine is validated, loaded and served like the built-in ones."""
    (tmp_path / "echo_engine.py").write_text(textwrap.dedent(ECHO_ENGINE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    options = importlib.import_module("echo_engine").EchoOptions
    monkeypatch.setitem(ENGINES, "echo", EngineInfo("chat", "echo_engine:load", options))
    with pytest.raises(ValidationError, match="unknown option 'prefx' for engine 'echo'"):
        ModelSpec(id="e", engine="echo", source="x", options={"prefx": ">"})
    client = app_client([{"id": "e", "engine": "echo", "source": "x", "options": {"prefix": ">>"}}])
    wait_ready(client, "e")
    card = client.get("/v1/models/e").json()
    assert card["engine"] == "echo" and card["context_length"] == 256
    response = client.post(
        "/v1/chat/completions",
        json={"model": "e", "messages": [{"role": "user", "content": "hello new engine"}]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ">> hello new engine "


def _imports(path: Path) -> set[str]:
    """The ai_stack modules a file imports at run time (anywhere in it, but not under TYPE_CHECKING)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ai_stack"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ai_stack"))
    return found


def test_no_engine_imports_another_and_the_layering_is_acyclic() -> None:
    root = Path(__file__).resolve().parent.parent / "ai_stack"
    modules = {
        ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in root.rglob("*.py")
    }
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()
    }
    engines = {info.loader.partition(":")[0] for info in ENGINES.values()} - {"ai_stack.engines.catalog"}
    for engine in engines:
        assert not graph[engine] & engines, f"{engine} imports {graph[engine] & engines}"
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "import cycle: " + " -> ".join([*path, name])
        state[name] = 1
        for other in sorted(graph[name]):
            visit(other, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])
