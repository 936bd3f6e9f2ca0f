"""The inference service's Prometheus metrics (registered on the server's registry; see
services/common/metrics.py). Where vLLM measures the same thing, the name is vLLM's, so dashboards built
for vLLM work unchanged; `model_name` is the store id.

    vllm:num_requests_running{model_name}            requests admitted and generating (read at scrape)
    vllm:time_to_first_token_seconds{model_name}     arrival to the first streamed token
    vllm:inter_token_latency_seconds{model_name}     between consecutive tokens of a choice
    vllm:prompt_tokens_total{model_name}             prompt tokens of finished requests
    vllm:generation_tokens_total{model_name}         generated tokens
    lmforge_inference_loaded_models                  models loaded now
    lmforge_inference_model_memory_bytes{model_name} each loaded model's weights in memory
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.engine.generation import Delta, Finished
from services.inference.registry import ModelRegistry

# vLLM's buckets for the same histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)


class _LoadedModels(Collector):
    """What is loaded and how busy it is, read from the model registry when Prometheus scrapes."""

    def __init__(self, models: ModelRegistry):
        self.models = models

    def collect(self):
        loaded = self.models.loaded()
        running = GaugeMetricFamily("vllm:num_requests_running", "requests admitted and generating",
                                    labels=["model_name"])
        memory = GaugeMetricFamily("lmforge_inference_model_memory_bytes", "weights of each loaded model in memory",
                                   labels=["model_name"])
        for model in loaded:
            running.add_metric([model.model_id], model.active_requests)
            memory.add_metric([model.model_id], model.backend.memory_bytes())
        yield running
        yield memory
        yield GaugeMetricFamily("lmforge_inference_loaded_models", "models loaded now", value=len(loaded))


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry, models: ModelRegistry):
        registry.register(_LoadedModels(models))
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "arrival to the first streamed token",
                              ["model_name"], buckets=TTFT_BUCKETS, registry=registry)
        self.inter_token = Histogram("vllm:inter_token_latency_seconds", "between consecutive tokens of a choice",
                                     ["model_name"], buckets=ITL_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "prompt tokens of finished requests", ["model_name"],
                                     registry=registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "generated tokens", ["model_name"],
                                         registry=registry)

    def observe(self, model_id: str, arrived: float, items: Iterator[Delta | Finished]) -> Iterator[Delta | Finished]:
        """Pass a request's stream through, timing its tokens (`arrived`: time.monotonic() at arrival)."""
        first_seen = False
        last_token_at: dict[int, float] = {}
        prompt_counted = False
        for item in items:
            now = time.monotonic()
            if isinstance(item, Delta) and item.token_ids:
                if not first_seen:
                    first_seen = True
                    self.ttft.labels(model_id).observe(now - arrived)
                previous = last_token_at.get(item.index)
                if previous is not None:
                    per_token = (now - previous) / len(item.token_ids)
                    for _ in item.token_ids:
                        self.inter_token.labels(model_id).observe(per_token)
                last_token_at[item.index] = now
            elif isinstance(item, Finished):
                self.generation_tokens.labels(model_id).inc(item.completion_tokens)
                if not prompt_counted:  # every choice of a request repeats the same prompt
                    prompt_counted = True
                    self.prompt_tokens.labels(model_id).inc(item.prompt_tokens)
            yield item
