"""`python -m bench [--quick|--full] [--only SECTION ...] [--out DIR]`: run the suite, write JSON + MD."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bench.context import Run, Settings
from bench.machine import load_average, machine_info, machine_slug

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ["physical", "gateway", "chat", "speech", "startup", "gpu", "prefix_cache", "head_of_line"]


def _section(name: str) -> Callable[[Run], dict[str, Any]]:
    """The section's entry point, imported only when it runs."""
    if name == "physical":
        from bench.sections.physical import run_physical

        return run_physical
    if name == "gateway":
        from bench.sections.gateway import run_gateway

        return run_gateway
    if name == "chat":
        from bench.sections.chat import run_chat

        return run_chat
    if name == "speech":
        from bench.sections.speech import run_speech

        return run_speech
    if name == "startup":
        from bench.sections.startup import run_startup

        return run_startup
    if name == "prefix_cache":
        from bench.prefix_cache import run_prefix_cache

        return run_prefix_cache
    if name == "head_of_line":
        from bench.head_of_line import run_head_of_line

        return run_head_of_line
    from bench.sections.gpu import run_gpu

    return run_gpu


@click.command()
@click.option("--quick/--full", default=False, help="--quick: small sizes; --full (default).")
@click.option("--only", "only", multiple=True, type=click.Choice(SECTIONS), help="Run only these sections.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one setting of the mode, e.g. --set sweep_tokens=16 (recorded in the results).",
)
@click.option(
    "--report-only",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Re-render the Markdown report and plots from an existing results JSON.",
)
def main(
    quick: bool, only: tuple[str, ...], out: Path, overrides: tuple[str, ...], report_only: Path | None
) -> None:
    """Benchmark ai-stack against plain transformers, llama.cpp and this machine's limits."""
    from bench.report import write_report

    if report_only is not None:
        results = json.loads(report_only.read_text())
        md = write_report(results, report_only.parent, report_only.stem)
        click.echo(f"report: {md}")
        return
    info = machine_info()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    stem = f"{date}-{machine_slug(info)}" + ("-quick" if quick else "")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    try:
        settings = Settings.for_mode(quick).override(list(overrides))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None
    run = Run(settings=settings, out=out, stem=stem)
    previous = json.loads(path.read_text()) if only and path.exists() else {}
    results: dict[str, Any] = {
        "schema": 1,
        "date": date,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "machine_slug": machine_slug(info),
        "mode": settings.mode,
        "settings": dataclasses.asdict(settings),
        "overrides": list(overrides),
        "load_average": {"start": load_average()},
        "sections": dict(previous.get("sections", {})),
    }
    if previous:  # --only into an existing file: keep the earlier runs' record too
        results["earlier_runs"] = [
            *previous.get("earlier_runs", []),
            {k: previous.get(k) for k in ("started_at", "finished_at", "overrides", "load_average", "mode")},
        ]
    for name in only or SECTIONS:
        start_load = load_average()
        run.log(f"section {name}: start (load average {start_load})")
        started = time.perf_counter()
        try:
            section = _section(name)(run)
        except Exception as exc:
            run.log(f"section {name} failed: {exc}")
            section = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        section["duration_s"] = round(time.perf_counter() - started, 1)
        section["load_average_start"] = start_load
        section["load_average"] = load_average()
        section["run"] = {
            "mode": settings.mode,
            "overrides": list(overrides),
            "started_at": results["started_at"],
        }
        results["sections"][name] = section
        path.write_text(json.dumps(results, indent=1, default=float))  # keep what we have so far
    results["load_average"]["end"] = load_average()
    results["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(results, indent=1, default=float))
    md = write_report(results, out, stem)
    click.echo(f"results: {path}\nreport:  {md}")
