"""`brickwork serve`: the OpenAI-compatible HTTP server (needs `pip install 'brickwork[serve]'`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.root import LibraryOpt, ModelOpt, app, fail, first_line, user_errors

log = logging.getLogger(__name__)


@app.command()
def serve(model: Optional[Path] = ModelOpt, library: Optional[Path] = LibraryOpt,
          executor: str = typer.Option("transformers", "--executor", help="transformers | vllm"),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: loopback only)."),
          port: int = typer.Option(8000, "--port"),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="BRICKWORK_API_KEY",
                                                help="Bearer key every /v1 and /metrics request must carry."),
          admin_key: Optional[str] = typer.Option(None, "--admin-key", envvar="BRICKWORK_ADMIN_KEY",
                                                  help="Bearer key of the /admin endpoints (off without it)."),
          admin_folder: Optional[Path] = typer.Option(
              None, "--admin-folder", help="The only folder /admin/bricks may take brick folders from."),
          max_batch: int = typer.Option(32, "--max-batch", help="Requests that share one executor run, at most."),
          batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", help="How long a batch waits for more requests."),
          concurrent_batches: int = typer.Option(4, "--concurrent-batches",
                                                 help="Batches running at once on vLLM (joining its running batches)."),
          max_queue: int = typer.Option(256, "--max-queue", help="Waiting requests beyond this get 429."),
          max_tokens: int = typer.Option(1024, "--max-tokens", help="The largest max_tokens a request may ask for."),
          max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="Larger request bodies get 413."),
          torch_threads: Optional[int] = typer.Option(
              None, "--torch-threads", help="Torch CPU threads (default: all cores but one, for the event loop)."),
          prefix_cache_mib: float = typer.Option(
              256.0, "--prefix-cache-mib", help="Prompt starts kept across batches, in MiB (transformers; 0: off)."),
          engine_process: bool = typer.Option(
              False, "--engine-process/--in-process",
              help="Run the model (transformers) in a process apart from HTTP: a crash is a 503, not a dead server."),
          log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level.")) -> None:
    """Serve OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health, /metrics and /admin."""
    from pydantic import ValidationError

    from orchestrator.integrations.server.config import LOOPBACK_HOSTS, ServerConfig

    try:
        config = ServerConfig(model=model, library=library, executor=executor, host=host, port=port, api_key=api_key,
                              admin_key=admin_key, admin_folder=admin_folder, max_batch=max_batch,
                              batch_wait_ms=batch_wait_ms, concurrent_batches=concurrent_batches,
                              max_queue=max_queue, max_tokens=max_tokens,
                              max_body_bytes=max_body_bytes, torch_threads=torch_threads,
                              prefix_cache_mib=prefix_cache_mib, engine_process=engine_process)
    except ValidationError as e:
        err = e.errors()[0]
        fail(f"--{'-'.join(str(x) for x in err['loc']).replace('_', '-')} {err.get('input')!r}: {err['msg']}")
    try:
        if config.admin_key is not None and config.admin_key == config.api_key:
            fail("--admin-key must differ from --api-key")
        if config.admin_folder is not None and not config.admin_folder.is_dir():
            fail(f"--admin-folder {str(config.admin_folder)!r} is not a folder")
        if host not in LOOPBACK_HOSTS and config.api_key is None:
            log.warning("serving on %s without an API key: anyone who can reach it can run it", host)
        import torch

        from orchestrator.api import Orchestrator
        from orchestrator.integrations.server import serve as run_server

        torch.set_num_threads(config.threads())  # before the model runs: no pool of more threads is ever started

        if config.uses_engine_process():  # the model in a process of its own; its startup errors come back here
            from orchestrator.integrations.server.engine_client import start_engine

            orc = start_engine(config)
        else:
            orc = Orchestrator.from_pretrained(config.model, config.library, config.executor,  # errors: one line
                                               **config.executor_options())
    except user_errors() as e:
        fail(first_line(e))
    try:
        run_server(config, orc, log_level=log_level, close_orchestrator=True)  # closed as the app shuts down
    finally:
        orc.close()  # when uvicorn returns (an error before serving); closing twice does nothing
