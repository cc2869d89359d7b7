"""Config loading (ai_stack/config.py): errors name file, key and problem; env and CLI override the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_stack.config import ConfigError, load_config


def test_bad_config_files_name_file_key_and_problem(tmp_path: Path) -> None:
    cases = {
        "broken.toml": ("[server\nport = 1", "", "not valid TOML"),
        "port.toml": ("[server]\nport = 99999", "server.port", "less than or equal to 65535"),
        "key.toml": (
            '[[models]]\nid = "a"\nsource = "fake:"\nengine = "fake"\ncolour = "red"',
            "models[0].colour",
            "unknown key",
        ),
        "dup.toml": (
            '[[models]]\nid = "a"\nsource = "x/y"\n[[models]]\nid = "b"\naliases = ["a"]\nsource = "x/y"',
            "",
            "already used",
        ),
        "kind.toml": (
            '[[models]]\nid = "a"\nsource = "x/y"\nengine = "nonsense"',
            "models[0].engine",
            "unknown engine 'nonsense'; known engines: transformers, llamacpp",
        ),
        "option.toml": (
            '[[models]]\nid = "a"\nsource = "x/y"\noptions = { max_batchh = 4 }',
            "models[0]",
            "model 'a': unknown option 'max_batchh' for engine 'transformers' "
            "(its options: max_batch, prefill_chunk, prefix_cache, prefix_cache_bytes, prefix_cache_block, "
            "double_quant)",
        ),
        "option-type.toml": (
            '[[models]]\nid = "a"\nsource = "x.gguf"\nengine = "llamacpp"\noptions = { parallel = "4" }',
            "models[0]",
            "model 'a': option 'parallel': Input should be a valid integer",
        ),
        "speech-kind.toml": (
            '[[models]]\nid = "a"\nsource = "x.onnx"\nengine = "piper"',
            "models[0]",
            "engine 'piper' serves speech models; set kind = \"speech\"",
        ),
    }
    for name, (text, key, problem) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        assert caught.value.source == str(path)
        assert key in caught.value.key
        assert problem in caught.value.problem
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_env_and_cli_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n')
    env = {"AI_STACK_PORT": "9100", "AI_STACK_API_KEY": "k", "AI_STACK_CORS_ORIGINS": "http://a, http://b"}
    config = load_config(path, environ=env)
    assert (config.server.port, config.server.host, config.server.api_key) == (9100, "0.0.0.0", "k")
    assert config.server.cors_origins == ["http://a", "http://b"]
    config = load_config(path, overrides={"port": 9200, "host": None}, environ=env)
    assert (config.server.port, config.server.host) == (9200, "0.0.0.0")
    with pytest.raises(ConfigError, match="AI_STACK_PORT"):
        load_config(path, environ={"AI_STACK_PORT": "many"})
