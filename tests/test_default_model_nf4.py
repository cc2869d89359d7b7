"""The real default model in 4-bit NF4 on CPU (bitsandbytes) through `ai-stack serve` and the openai SDK.

The same checks as tests/test_default_model.py for the answer, a tool round trip and structured output
(imported from there, run against this module's NF4 server), plus proof that the model really ran in NF4.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ai_stack.config import default_config_path, load_config
from ai_stack.engines.torch_device import bitsandbytes_problem
from tests.conftest import DEFAULT_CHAT_MODEL, served
from tests.test_default_model import (  # noqa: F401  (collected here, against the NF4 server)
    test_capital_of_france,
    test_json_schema_answer_validates,
    test_weather_tool_round_trip,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bitsandbytes_problem("cpu") is not None, reason=f"{bitsandbytes_problem('cpu')}"),
]


@pytest.fixture(scope="module")
def nf4_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`ai-stack serve` with the default chat model in NF4 on CPU: its URL and its log file."""
    default = load_config(default_config_path())
    spec = next(s for s in default.models if s.id == DEFAULT_CHAT_MODEL)
    folder = tmp_path_factory.mktemp("serve-nf4")
    config = folder / "nf4.toml"
    config.write_text(
        f'[server]\nhome = "{default.server.home}"\n\n[[models]]\nid = "{spec.id}"\naliases = ["default"]\n'
        f'engine = "transformers"\nsource = "{spec.source}"\ndevice = "cpu"\nquantization = "nf4"\n'
    )
    with served(config) as url:
        yield url, folder / "serve.log"


@pytest.fixture(scope="module")
def client(nf4_server: tuple[str, Path]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{nf4_server[0]}/v1", api_key="unused", max_retries=0, timeout=600)


def test_the_model_runs_in_nf4(nf4_server: tuple[str, Path]) -> None:
    log = nf4_server[1].read_text()
    assert "nf4 4-bit (bitsandbytes)" in log, log
    assert "without quantization" not in log, log
