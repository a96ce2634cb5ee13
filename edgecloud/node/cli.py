"""`edgecloud serve`: the model node."""

from __future__ import annotations

import os
from pathlib import Path

import typer

SERVE_HELP = """Serve a GGUF model with an OpenAI-compatible API (llama.cpp, continuous batching).

With no --model it serves the embedded default, Gemma 3 270M (a base model: prompts that
continue text work best; chat uses a plain "User:/Assistant:" transcript, see docs/node.md).

[bold]Examples[/bold]

  edgecloud serve                                  # embedded model on 127.0.0.1:8081
  edgecloud serve --parallel 8 --ctx 2048          # 8 requests decoded together
  edgecloud serve --model my.gguf --name my-model --lazy
  edgecloud serve --model vlm.gguf --mmproj mmproj.gguf   # reads image_url parts too
  EDGECLOUD_ADMIN_TOKEN=secret edgecloud serve     # enables POST /admin/model (hot swap)

  curl localhost:8081/v1/completions -d '{"prompt": "Once upon a time", "max_tokens": 32}'
"""


def serve(
    model: Path | None = typer.Option(None, "--model", help="GGUF file (default: embedded model)."),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Vision projector GGUF for the model: image parts are read."
    ),
    host: str | None = typer.Option(None, help="Address to bind [default: 127.0.0.1]."),
    port: int | None = typer.Option(None, help="Port [default: 8081]."),
    name: str | None = typer.Option(None, help="Model id served [default: gemma-3-270m]."),
    alias: list[str] = typer.Option([], "--alias", help="Another accepted model name (repeat)."),
    accept_any_model: bool | None = typer.Option(
        None, "--accept-any-model", help="Serve whatever model name a request sends."
    ),
    threads: int | None = typer.Option(None, help="CPU threads for llama.cpp [default: all]."),
    ctx: int | None = typer.Option(None, help="Context tokens per request [default: 4096]."),
    parallel: int | None = typer.Option(None, help="Slots decoded together [default: 4]."),
    max_queue: int | None = typer.Option(None, help="Waiting requests before 429 [default: 16]."),
    batch: int | None = typer.Option(
        None, help="Tokens per decode call, at least --parallel [default: 512]."
    ),
    model_dir: list[Path] = typer.Option(
        [],
        "--model-dir",
        help="Directory the admin swap may load models from (repeat) [default: the startup "
        "model's directory].",
    ),
    preload: bool | None = typer.Option(
        None, "--preload/--lazy", help="Load at start, or on the first request [default: preload]."
    ),
    version: str | None = typer.Option(None, help="Version label of the model file."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with these settings."),
    admin_token_env: str | None = typer.Option(
        None, help="Env var with the admin bearer token [default: EDGECLOUD_ADMIN_TOKEN]."
    ),
    api_key_env: str | None = typer.Option(
        None, help="Env var with the key the inference routes require (Bearer or x-api-key)."
    ),
    log_level: str | None = typer.Option(None, help="debug, info, warning [default: info]."),
) -> None:
    from edgecloud.api.serving import serve_forever
    from edgecloud.logs import configure_logging, log_event
    from edgecloud.node.config import build_config
    from edgecloud.node.errors import ConfigError

    overrides: dict[str, object] = {
        "model": str(model) if model else None,
        "mmproj": str(mmproj) if mmproj else None,
        "host": host,
        "port": port,
        "name": name,
        "aliases": alias or None,
        "accept_any_model": accept_any_model,
        "threads": threads,
        "ctx": ctx,
        "parallel": parallel,
        "max_queue": max_queue,
        "batch": batch,
        "model_dirs": [str(d) for d in model_dir] or None,
        "preload": preload,
        "version": version,
        "admin_token_env": admin_token_env,
        "api_key_env": api_key_env,
        "log_level": log_level,
    }
    try:
        cfg = build_config(str(config) if config else None, overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    for what, path in (("model", cfg.model), ("projector", cfg.mmproj)):
        if path and not Path(path).is_file():
            typer.secho(f"error: {what} file not found: {path}", err=True, fg="red")
            raise typer.Exit(2)
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        # Asked for a key and given none: refuse to start rather than serve without one.
        typer.secho(f"error: --api-key-env {cfg.api_key_env}: that variable is not set",
                    err=True, fg="red")
        raise typer.Exit(2)
    configure_logging(cfg.log_level)
    import logging

    from edgecloud.node.server import NodeApp

    app = NodeApp(cfg)
    log_event(
        logging.getLogger("edgecloud.node"),
        "node_starting",
        host=cfg.host,
        port=cfg.port,
        model=cfg.name,
        slots=cfg.parallel,
        ctx=cfg.ctx,
        threads=cfg.threads,
        preload=cfg.preload,
        mmproj=cfg.mmproj,
        admin_api=app.admin_token is not None,
        api_key=app.api_key is not None,
    )
    serve_forever(app, cfg.host, cfg.port, limits=cfg, drain_timeout_s=cfg.drain_timeout_s,
                  on_drain=app.begin_drain)
    if app.fatal_error:
        typer.secho(f"error: {app.fatal_error}", err=True, fg="red")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount `serve` on the root app."""
    app.command("serve", help=SERVE_HELP)(serve)
