"""Prometheus metrics of one server (its own CollectorRegistry, so several apps in a process do not clash).

GET /metrics serves them as Prometheus text: requests and errors by endpoint and status, request latency,
tokens, steps run, uses of each brick, batch sizes, the queue depth and the prefix cache's hits.
"""

from __future__ import annotations

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError as e:  # pragma: no cover (part of the serve extra)
    from bricks.errors import MissingExtraError

    raise MissingExtraError("the HTTP server needs prometheus-client: pip install 'brickwork[serve]'") from e

from orchestrator.result import Result

__all__ = ["ServerMetrics", "prefix_cache_hits"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """The counters and histograms of one app, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("brickwork_requests_total", "HTTP requests answered", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("brickwork_errors_total", "Requests answered with an error", ["endpoint", "code"],
                              registry=r)
        self.latency = Histogram("brickwork_request_latency_seconds", "Time from request to answer", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("brickwork_tokens_total", "Tokens shown to and written by the model", ["kind"],
                              registry=r)
        self.steps = Counter("brickwork_steps_total", "Plan steps run", ["status"], registry=r)
        self.brick_uses = Counter("brickwork_brick_uses_total", "Steps run with each brick (id@version; base: none)",
                                  ["brick"], registry=r)
        self.batch_size = Histogram("brickwork_batch_size", "Requests per shared run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = Histogram("brickwork_batch_seconds", "Time of one shared run", buckets=_LATENCY_BUCKETS,
                                       registry=r)
        self.queued = Gauge("brickwork_queue_depth", "Requests waiting for a batch", registry=r)
        self.disconnects = Counter("brickwork_client_disconnects_total", "Requests whose client went away first",
                                   registry=r)
        self.prefix_hits = Gauge("brickwork_prefix_cache_hits", "Prompt beginnings taken from the prefix cache so far",
                                 registry=r)
        self.prefix_hit_tokens = Gauge("brickwork_prefix_cache_hit_tokens",
                                       "Prompt tokens the prefix cache's hits did not compute, so far", registry=r)

    def observe_request(self, endpoint: str, status: int, seconds: float, code: str | None = None) -> None:
        """One answered request (and its error code when it is an error)."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, code or str(status)).inc()

    def observe_result(self, result: Result, prompt_tokens: int, completion_tokens: int) -> None:
        """Tokens, steps and brick uses of one run."""
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
        for step in result.steps:
            self.steps.labels("failed" if step.error else "ok").inc()
            for brick in step.bricks or ():
                self.brick_uses.labels(brick.key).inc()
            if not step.bricks:
                self.brick_uses.labels("base").inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


def prefix_cache_hits(orc) -> tuple[int | None, int | None]:
    """(hits, prompt tokens not computed) of an orchestrator's prefix cache so far (an engine process's: as of its
    last batch); None without one."""
    stats = getattr(getattr(getattr(orc, "executor", None), "prefix_cache", None), "stats", None)
    if stats is not None:
        return stats.hits, stats.hit_tokens
    engine = getattr(orc, "snapshot", None)
    return getattr(engine, "prefix_hits", None), getattr(engine, "prefix_hit_tokens", None)
