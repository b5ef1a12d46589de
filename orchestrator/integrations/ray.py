"""Batch jobs on Ray Data: the same job as `batch.run_local`, its chunks spread over worker actors.

Each worker actor opens one Orchestrator (transformers or vLLM inside) and runs whole chunks with
`batch.run_chunk`; the driver appends each finished chunk to the output through the same `BatchJob`, so the
output file, its job identity, resuming and error rows are exactly those of the local engine, and so are the
outputs (every chunk is the same slice of the input, batched the same way). Each worker's Orchestrator is
pinned to the library it loaded (no reload while the job runs) and reports that library's fingerprint with
every chunk: a worker that loaded another library than the job's stops the job (`BatchJob.library_changed`).

Ray is imported here only; without it the job stops with a one-line message naming `brickwork[ray]`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from orchestrator.integrations.batch import BatchError, BatchJob, BatchSummary, Progress, TaskRow, run_chunk

__all__ = ["run_ray", "import_ray"]

log = logging.getLogger(__name__)


def import_ray():
    """The `ray` module with Ray Data, or a BatchError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BatchError("--engine ray needs Ray Data: pip install 'brickwork[ray]'") from None
    return ray


class ChunkWorker:
    """A Ray actor: one Orchestrator, loaded once, that turns a chunk of input rows into output rows."""

    def __init__(self, model: str | None, library: str | None, executor: str, executor_options: dict) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from orchestrator.api import Orchestrator
        from orchestrator.library_index import index_fingerprint

        self.orc = Orchestrator.from_pretrained(model, library, executor, **executor_options)
        self.orc.reload_on_change = False  # pinned: the library as this worker loaded it, for the whole job
        self.library_fingerprint = index_fingerprint(self.orc.planner.library)

    def __call__(self, item: dict) -> dict:
        rows = [TaskRow(**r) for r in json.loads(item["rows"])]
        return {"chunk": item["chunk"], "rows": json.dumps(run_chunk(self.orc, rows)),
                "library": self.library_fingerprint}


def run_ray(job: BatchJob, *, model: Path | None = None, library: Path | None = None,
            executor: str = "transformers", workers: int = 2, address: str | None = None,
            cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, executor_options: dict | None = None,
            progress: Progress | None = None) -> BatchSummary:
    """Run the job's pending chunks on `workers` actors of a Ray cluster, appending each chunk as it comes back.

    `address` None starts a local Ray (with `workers * cpus_per_worker` CPUs) and stops it at the end;
    otherwise it is passed to `ray.init` ("auto", "ray://host:10001") and the cluster is left running.
    Every worker node needs brickwork installed and the model and library at the same paths.
    """
    if workers < 1:
        raise BatchError(f"workers must be at least 1, got {workers}")
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    skipped, total = len(job.done), job.remaining
    t0, written = time.perf_counter(), 0
    if progress:
        progress(0, total)
    chunks = job.pending_chunks()
    if not chunks:
        return job.summary(written=0, skipped=skipped, seconds=time.perf_counter() - t0)
    started = not ray.is_initialized()
    if started:
        init = dict(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
        if address is None:
            init["num_cpus"] = max(1, int(round(workers * cpus_per_worker)))
        ray.init(address=address, **init)
    try:
        logging.getLogger("ray.data").setLevel(max(logging.WARNING, logging.getLogger("ray.data").level))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = [{"chunk": k, "rows": json.dumps([asdict(r) for r in rows], ensure_ascii=False)} for k, rows in chunks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        resources = {"num_cpus": cpus_per_worker, **({"num_gpus": gpus_per_worker} if gpus_per_worker else {})}
        ds = ds.map(ChunkWorker, fn_constructor_kwargs={
            "model": str(model) if model is not None else None,
            "library": str(library) if library is not None else None,
            "executor": executor, "executor_options": dict(executor_options or {})},
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))), **resources)
        for item in ds.iter_rows():
            if job.pin is not None and item["library"] != job.identity.get("library_fingerprint"):
                job.library_changed("the library changed before a Ray worker loaded it")
            written += job.write(json.loads(item["rows"]))
            if progress:
                progress(written, total)
    finally:
        if started:
            ray.shutdown()
    return job.summary(written=written, skipped=skipped, seconds=time.perf_counter() - t0)
