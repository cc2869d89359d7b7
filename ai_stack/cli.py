"""The `ai-stack` command: serve, models, prepare."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ai_stack.config import Config, ConfigError, load_config
from ai_stack.engines.catalog import ENGINES
from ai_stack.sources import SourceError, cache_state, clean_stale_partials, parse_source, prepare_source


def _load(config_path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return load_config(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(f"bad config: {exc}") from None


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML config file (default: $AI_STACK_CONFIG or configs/default.toml).",
)


@click.group()
@click.version_option(package_name="ai-stack")
def main() -> None:
    """ai-stack: OpenAI-compatible chat and speech from local models, in one process."""


@main.command()
@config_option
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1; env AI_STACK_HOST).")
@click.option("--port", type=int, default=None, help="Port to bind (default 8080; env AI_STACK_PORT).")
@click.option(
    "--api-key", default=None, help="Require 'Authorization: Bearer KEY' on /v1 (env AI_STACK_API_KEY)."
)
@click.option(
    "--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default=None
)
def serve(
    config_path: Path | None, host: str | None, port: int | None, api_key: str | None, log_level: str | None
) -> None:
    """Start the server; models load in the background while HTTP is already up."""
    config = _load(config_path, {"host": host, "port": port, "api_key": api_key, "log_level": log_level})
    level = config.server.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ai_stack.app import create_app
    from ai_stack.http_server import serve as serve_http

    clean_stale_partials(config.server.home)

    click.echo(
        f"ai-stack: config {config.source}; {len(config.models)} model(s); "
        f"listening on http://{config.server.host}:{config.server.port}",
        err=True,
    )
    app = create_app(config)
    serve_http(app, config, on_exit=app.state.chat.shutdown)


@main.command()
@config_option
def models(config_path: Path | None) -> None:
    """List configured models and whether their weights are ready to load."""
    config = _load(config_path)
    click.echo(f"config: {config.source}\nhome:   {config.server.home}")
    for spec in config.models:
        try:
            if ENGINES[spec.engine].prepared:
                state = cache_state(parse_source(spec.source, config.base_dir), config.server.home)
            else:
                state = "packaged voice/model" if spec.source.startswith("embedded:") else "local files"
        except SourceError as exc:
            state = f"error: {exc}"
        aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        click.echo(
            f"- {spec.id}{aliases}\n    kind {spec.kind}, engine {spec.engine}, source {spec.source}\n"
            f"    {state}"
        )


@main.command()
@config_option
@click.argument("model_ids", nargs=-1)
def prepare(config_path: Path | None, model_ids: tuple[str, ...]) -> None:
    """Assemble and convert model weights ahead of time (all local models, or the ones named)."""
    config = _load(config_path)
    known = {name: spec for spec in config.models for name in spec.names}
    unknown = [name for name in model_ids if name not in known]
    if unknown:
        raise click.ClickException(f"unknown model(s): {', '.join(unknown)}; see `ai-stack models`")
    specs = [known[name] for name in model_ids] if model_ids else config.models
    for stale in clean_stale_partials(config.server.home):
        click.echo(f"removed {stale}, left by an interrupted run", err=True)
    failed = False
    for spec in specs:
        # `auto` may fall back to transformers (and llama.cpp reads its tokenizer from the converted folder).
        if not ENGINES[spec.engine].prepared:
            continue
        try:
            source = parse_source(spec.source, config.base_dir)
            if source.kind == "hub":
                click.echo(f"{spec.id}: hub id {source.value}; transformers downloads it on first load")
                continue
            location = prepare_source(source, config.server.home, progress=True)
            click.echo(f"{spec.id}: ready at {location}")
        except SourceError as exc:
            click.echo(f"{spec.id}: {exc}", err=True)
            failed = True
    if failed:
        sys.exit(1)
