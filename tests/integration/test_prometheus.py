"""Both servers' Prometheus metrics, scraped by a real Prometheus server (the Debian `prometheus` package,
installed by .ci/run) on loopback, and read back through Prometheus's HTTP query API.

Without a `prometheus` binary the test is skipped, unless LMFORGE_REQUIRE_SERVERS=1 (CI sets it), where
that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request

import grpc
import pytest

from lmforge.client import InferenceClient, TrainerClient
from lmforge.v1 import trainer_pb2
from tests.conftest import EXAMPLES
from tests.helpers import rpc_code, sft_request, wait_for

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and os.environ.get("LMFORGE_REQUIRE_SERVERS") == "1":
    raise RuntimeError("prometheus is not installed (apt-get install prometheus); LMFORGE_REQUIRE_SERVERS=1")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (apt-get install prometheus)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


class PrometheusServer:
    def __init__(self, tmp_path, targets: dict[str, int]):
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        jobs = "\n".join(f"  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']"
                         for name, port in targets.items())
        config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}\n")
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=60, what="prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return "Ready" in get(f"http://127.0.0.1:{self.port}/-/ready")
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        answer = json.loads(get(f"http://127.0.0.1:{self.port}/api/v1/query?"
                                + urllib.parse.urlencode({"query": promql})))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The query's single value once Prometheus has scraped it (None until then)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def test_prometheus_scrapes_both_services(tmp_path, store_root, tiny_model_id):
    from services.inference.server import InferenceServer
    from services.trainer.server import TrainerServer

    trainer = TrainerServer(tmp_path / "home", store_root, port=0, metrics_port=0, on_shutdown="pause")
    inference = InferenceServer(store_root, port=0, metrics_port=0)
    inference.serve()
    prometheus = None
    try:
        with TrainerClient(trainer.address) as t, InferenceClient(inference.address) as i:
            dataset = t.upload_dataset(EXAMPLES / "sft_demo.jsonl")
            job = t.start_training(sft_request(tiny_model_id, dataset.id, max_steps=2))
            assert t.wait(job.id).state == trainer_pb2.JOB_STATE_SUCCEEDED
            assert rpc_code(lambda: t.get_job("job-nope")) == grpc.StatusCode.NOT_FOUND
            for _ in i.generate(tiny_model_id, messages=[{"role": "user", "content": "你好"}], max_new_tokens=6,
                                ignore_eos=True):
                pass
        # The endpoint itself, in Prometheus's text format.
        text = get(f"http://127.0.0.1:{trainer.metrics.port}/metrics")
        assert 'lmforge_rpc_requests_total{code="NOT_FOUND",method="GetJob",service="lmforge.v1.TrainerService"} 1.0' \
            in text
        prometheus = PrometheusServer(tmp_path, {"trainer": trainer.metrics.port, "inference": inference.metrics.port})
        # Trainer series: jobs by state, RPCs by code, tokens trained, the job's duration.
        assert wait_for(lambda: prometheus.value('lmforge_trainer_jobs{job="trainer",state="SUCCEEDED"}'),
                        timeout=60, what="the trainer series in Prometheus") == 1
        assert prometheus.value('lmforge_rpc_requests_total{job="trainer",method="StartTraining",code="OK"}') == 1
        assert prometheus.value('lmforge_trainer_tokens_trained_total{job="trainer"}') > 0
        assert prometheus.value('lmforge_trainer_job_duration_seconds_count{job="trainer",method="sft",'
                                'state="SUCCEEDED"}') == 1
        # Inference series, with vLLM's names: time to first token, tokens, what is loaded.
        model = f'job="inference",model_name="{tiny_model_id}"'
        assert wait_for(lambda: prometheus.value(f"vllm:time_to_first_token_seconds_count{{{model}}}"),
                        timeout=60, what="the inference series in Prometheus") == 1
        assert prometheus.value(f"vllm:generation_tokens_total{{{model}}}") == 6
        assert prometheus.value(f"vllm:inter_token_latency_seconds_count{{{model}}}") == 5
        assert prometheus.value(f"vllm:num_requests_running{{{model}}}") == 0
        assert prometheus.value('lmforge_inference_loaded_models{job="inference"}') == 1
        assert prometheus.value(f"lmforge_inference_model_memory_bytes{{{model}}}") > 0
        assert prometheus.value('lmforge_rpc_requests_total{job="inference",method="Generate",code="OK"}') == 1
    finally:
        if prometheus is not None:
            prometheus.stop()
        inference.stop(grace_seconds=1)
        trainer.stop(grace_seconds=2)
