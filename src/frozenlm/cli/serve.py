"""`frozenlm serve`: the backbone and trained plug-ins over an OpenAI-compatible HTTP API
(`frozenlm.serve.app.create_app`). Every option is also an environment variable
(FROZENLM_SERVE_<OPTION>, e.g. FROZENLM_SERVE_API_KEY); an option given wins."""

from __future__ import annotations

import argparse
import os
from typing import Any

from frozenlm.cli.common import add_backbone, load_backbone

PREFIX = "FROZENLM_SERVE_"


def _env(name: str, default: Any, kind: type = str) -> Any:
    """The default of option `name`: its environment variable, or `default`."""
    text = os.environ.get(PREFIX + name.upper().replace("-", "_"))
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise SystemExit(
            f"frozenlm serve: {PREFIX}{name.upper().replace('-', '_')}={text!r} is not a "
            f"valid {kind.__name__}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the frozen backbone and trained plug-ins (soft prompt, ID-PT, deep prompt, "
        "connector) by name over OpenAI-compatible routes, rows of different plug-ins sharing "
        "forwards. Every option is also an environment variable FROZENLM_SERVE_<OPTION>."
    )
    add_backbone(parser)
    parser.set_defaults(backbone=_env("backbone", "default"))
    parser.add_argument(
        "--plugin",
        action="append",
        default=[p for p in _env("plugin", "").split(",") if p],
        metavar="[NAME=]DIR",
        help="a trained plug-in folder to serve (repeatable; named after its folder unless "
        "NAME= is given); env: comma-separated",
    )
    parser.add_argument("--host", default=_env("host", "127.0.0.1"), help="default: %(default)s")
    parser.add_argument("--port", type=int, default=_env("port", 8000, int))
    parser.add_argument(
        "--model-name", default=_env("model_name", None), help="the backbone's model name"
    )
    parser.add_argument(
        "--api-key",
        default=_env("api_key", None),
        help="require Authorization: Bearer KEY on every route (env FROZENLM_SERVE_API_KEY)",
    )
    parser.add_argument(
        "--admin-token",
        default=_env("admin_token", None),
        help="turn on /admin/plugins (and, with --plugin-root, /v1/files and "
        "/v1/fine_tuning/jobs), guarded by X-Admin-Token: TOKEN or Authorization: Bearer TOKEN",
    )
    parser.add_argument(
        "--plugin-root",
        default=_env("plugin_root", None),
        metavar="DIR",
        help="the only folder /admin/plugins may load plug-ins from",
    )
    parser.add_argument(
        "--max-loaded",
        type=int,
        default=_env("max_loaded", 16, int),
        help="plug-ins in memory at once; the least recently used is evicted (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--policy",
        choices=("mixed", "per-task", "single"),
        default=_env("policy", "mixed"),
        help="which rows share a forward: every model's (mixed, the default), one model's, "
        "or one request at a time",
    )
    parser.add_argument("--gather-ms", type=float, default=_env("gather_ms", 5.0, float))
    parser.add_argument("--max-batch-tokens", type=int, default=_env("max_batch_tokens", 4096, int))
    parser.add_argument("--max-batch-rows", type=int, default=_env("max_batch_rows", 32, int))
    parser.add_argument("--max-queue", type=int, default=_env("max_queue", 256, int))
    parser.add_argument(
        "--max-body-bytes", type=int, default=_env("max_body_bytes", 1_000_000, int)
    )
    parser.add_argument(
        "--request-timeout", type=float, default=_env("request_timeout", 300.0, float)
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=_env("shutdown_timeout", 30.0, float),
        help="seconds SIGTERM waits for requests in flight (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from frozenlm.serve.app import ServeConfig, create_app
    from frozenlm.serve.batcher import BatcherConfig, Policy

    batcher = BatcherConfig(
        gather_ms=args.gather_ms,
        max_tokens=args.max_batch_tokens,
        max_rows=args.max_batch_rows,
        max_queue=args.max_queue,
        policy=Policy(args.policy),
    )
    config = ServeConfig(
        api_key=args.api_key,
        admin_token=args.admin_token,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        batcher=batcher,
    )
    backbone = load_backbone(args)
    app = create_app(
        backbone,
        args.model_name,
        plugins=args.plugin,
        plugin_root=args.plugin_root,
        max_loaded=args.max_loaded,
        config=config,
        backbone_ref=args.backbone,
    )
    logging.getLogger("frozenlm.serve.access").setLevel(logging.INFO)
    names = ", ".join(m.name for m in app.state.table.models())
    print(f"serving {names} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    return 0
