"""Prometheus metrics of one app: requests, tokens, and each model's state, served at /metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ai_stack.registry import ModelRegistry, ModelState


class _ModelStates(Collector):
    """ai_stack_model_state{model, state}: 1 for each model's current state."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ai_stack_model_state", "Model lifecycle state", labels=["model", "state"])
        for entry in self.models.entries.values():
            for state in ModelState:
                family.add_metric([entry.spec.id, state.value], 1.0 if entry.state == state else 0.0)
        yield family


class _Upstreams(Collector):
    """Per upstream of each remote model: requests, errors by kind, latency to response headers, in flight."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def collect(self) -> Iterator[Metric]:
        from ai_stack.fleet.engine import RemoteEngine
        from ai_stack.fleet.pool import LATENCY_BUCKETS

        labels = ["model", "upstream"]
        requests = CounterMetricFamily(
            "ai_stack_upstream_requests", "Requests sent to an upstream", labels=labels
        )
        errors = CounterMetricFamily(
            "ai_stack_upstream_errors",
            "Upstream failures: connect, connection, timeout, status_4xx, status_5xx, broken_stream",
            labels=[*labels, "kind"],
        )
        latency = HistogramMetricFamily(
            "ai_stack_upstream_latency_seconds",
            "Seconds from sending a request to its response headers",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "ai_stack_upstream_in_flight", "Requests on an upstream now", labels=labels
        )
        healthy = GaugeMetricFamily(
            "ai_stack_upstream_healthy", "1 while an upstream passes its checks", labels=labels
        )
        draining = GaugeMetricFamily(
            "ai_stack_upstream_draining", "1 while an upstream is drained", labels=labels
        )
        for entry in self.models.entries.values():
            if not isinstance(entry.engine, RemoteEngine):
                continue
            for upstream in entry.engine.pool.upstreams:
                names, stats = [entry.spec.id, upstream.url], upstream.stats
                requests.add_metric(names, stats.requests)
                for kind, count in stats.errors.items():
                    errors.add_metric([*names, kind], count)
                cumulative, buckets = 0, []
                for bound, count in zip(
                    [*map(str, LATENCY_BUCKETS), "+Inf"], stats.latency_counts, strict=True
                ):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                latency.add_metric(names, buckets, stats.latency_sum)
                in_flight.add_metric(names, upstream.outstanding)
                healthy.add_metric(names, 1.0 if upstream.healthy else 0.0)
                draining.add_metric(names, 1.0 if upstream.draining else 0.0)
        yield from (requests, errors, latency, in_flight, healthy, draining)


class Metrics:
    """The counters the serving layer updates, in a registry of their own (no process globals)."""

    def __init__(self, models: ModelRegistry) -> None:
        self.registry = CollectorRegistry()
        self.completions = Counter(
            "ai_stack_chat_completions",
            "Chat completions finished",
            ["model", "finish_reason"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "ai_stack_prompt_tokens", "Prompt tokens processed", ["model"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "ai_stack_completion_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        # The prompt tokens split by the engines' prefix caches: reused KV vs computed by a prefill.
        self.prompt_tokens_cached = Counter(
            "ai_stack_prompt_tokens_cached",
            "Prompt tokens whose KV came from the prefix cache",
            ["model"],
            registry=self.registry,
        )
        self.prompt_tokens_computed = Counter(
            "ai_stack_prompt_tokens_computed",
            "Prompt tokens prefilled (not found in the prefix cache)",
            ["model"],
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "ai_stack_generation_seconds",
            "Wall time of a chat generation",
            ["model"],
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        # Overload control (ai_stack/serving/admission.py).
        self.requests_waiting = Gauge(
            "ai_stack_requests_waiting",
            "Requests admitted and waiting for a generation slot (queue depth)",
            ["model"],
            registry=self.registry,
        )
        self.requests_running = Gauge(
            "ai_stack_requests_running", "Requests generating now", ["model"], registry=self.registry
        )
        self.requests_rejected = Counter(
            "ai_stack_requests_rejected",
            "Requests refused with 429: running and waiting requests were at their limit",
            ["model"],
            registry=self.registry,
        )
        self.deadlines_expired = Counter(
            "ai_stack_deadlines_expired",
            "Requests ended by a deadline: queue (queue_timeout) or request (request_timeout)",
            ["model", "deadline"],
            registry=self.registry,
        )
        self.generations_aborted = Counter(
            "ai_stack_generations_aborted",
            "Generations stopped before their end: cancelled (client left), deadline, shutdown",
            ["model", "reason"],
            registry=self.registry,
        )
        self.registry.register(_ModelStates(models))
        self.registry.register(_Upstreams(models))

    def record_chat(
        self,
        model: str,
        finish_reason: str,
        prompt: int,
        completion: int,
        seconds: float,
        cached_tokens: int = 0,
    ) -> None:
        """Count one finished chat generation (cached_tokens: its prompt tokens served by a prefix cache)."""
        self.completions.labels(model, finish_reason).inc()
        self.prompt_tokens.labels(model).inc(prompt)
        cached = min(max(cached_tokens, 0), prompt)
        self.prompt_tokens_cached.labels(model).inc(cached)
        self.prompt_tokens_computed.labels(model).inc(prompt - cached)
        self.completion_tokens.labels(model).inc(completion)
        self.generation_seconds.labels(model).observe(seconds)

    def record_queue(self, model: str, waiting: int, running: int) -> None:
        """The model's queue depth and running requests now."""
        self.requests_waiting.labels(model).set(waiting)
        self.requests_running.labels(model).set(running)

    def record_rejection(self, model: str) -> None:
        """Count one request refused with 429."""
        self.requests_rejected.labels(model).inc()

    def record_deadline(self, model: str, deadline: str) -> None:
        """Count one request ended by a deadline ("queue" or "request")."""
        self.deadlines_expired.labels(model, deadline).inc()

    def record_abort(self, model: str, reason: str) -> None:
        """Count one generation stopped early ("cancelled", "deadline", "shutdown")."""
        self.generations_aborted.labels(model, reason).inc()


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics in the Prometheus text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4; charset=utf-8")
