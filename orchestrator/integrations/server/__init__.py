"""`brickwork serve`: an OpenAI-compatible HTTP server over an Orchestrator (pip install 'brickwork[serve]').

- `ServerConfig` (config.py): what to load, where to listen, keys and limits.
- `create_app(config, orchestrator=None)` (app.py): the FastAPI app: /v1/chat/completions, /v1/completions,
  /v1/models, /health, /metrics and /admin/bricks.
- `MicroBatcher` (batcher.py) and `Runner` (runner.py): requests that arrive together share executor runs.

FastAPI, uvicorn and prometheus-client are imported only when `create_app` or `serve` is used; without them
that fails with a MissingExtraError naming `brickwork[serve]`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from orchestrator.integrations.server.config import APIError, ServerConfig

if TYPE_CHECKING:
    from orchestrator.integrations.server.app import create_app

__all__ = ["APIError", "ServerConfig", "create_app", "serve"]

log = logging.getLogger(__name__)


def __getattr__(name: str):
    if name == "create_app":
        from orchestrator.integrations.server.app import create_app

        return create_app
    raise AttributeError(f"module 'orchestrator.integrations.server' has no attribute {name!r}")


def serve(config: ServerConfig, orchestrator=None, *, log_level: str = "info",
          close_orchestrator: bool = False) -> None:
    """Run the server in this thread until interrupted (uvicorn on `config.host`:`config.port`), with torch's CPU
    threads set to `config.threads()`.

    `close_orchestrator`: close a given orchestrator when the app shuts down. uvicorn raises the SIGTERM or SIGINT
    that stopped it again once the app is down, so code after this call may never run: an orchestrator whose
    engine has processes of its own (vLLM) must be closed here, or they outlive the server."""
    try:
        import uvicorn
    except ImportError as e:
        from bricks.errors import MissingExtraError

        raise MissingExtraError("the HTTP server needs fastapi and uvicorn: pip install 'brickwork[serve]'") from e
    import torch

    from orchestrator.integrations.server.app import create_app

    torch.set_num_threads(config.threads())
    log.info("torch CPU threads: %d", config.threads())
    app = create_app(config, orchestrator, close_orchestrator=close_orchestrator)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, timeout_graceful_shutdown=10,
                timeout_keep_alive=config.keep_alive_s)
