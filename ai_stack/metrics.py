"""Prometheus metrics of one app: requests, tokens, and each model's state, served at /metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
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
        self.generation_seconds = Histogram(
            "ai_stack_generation_seconds",
            "Wall time of a chat generation",
            ["model"],
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.registry.register(_ModelStates(models))

    def record_chat(
        self, model: str, finish_reason: str, prompt: int, completion: int, seconds: float
    ) -> None:
        """Count one finished chat generation."""
        self.completions.labels(model, finish_reason).inc()
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)
        self.generation_seconds.labels(model).observe(seconds)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics in the Prometheus text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4; charset=utf-8")
