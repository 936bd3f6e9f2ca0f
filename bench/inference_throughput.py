"""Inference benchmark: our gRPC service vs raw transformers on the same model, in one run.

    .venv/bin/python bench/inference_throughput.py [--store DIR] [--model-id smollm2-135m-instruct]

Measures, on the same machine and run:
1. single-stream decode: tokens/s of a 128-token greedy answer through gRPC (transformers backend) vs
   raw `model.generate` (same dtype, same prompt, EOS ignored so both make exactly 128 tokens),
   alternating the two `--repeats` times; the ratio is gRPC / raw (goal >= 0.95);
2. the memory-bandwidth ceiling: measured copy bandwidth / bytes of weights read per token;
3. time to first token through gRPC, p50 and p99 over `--ttft-requests` requests;
4. resident memory after loading with quantization none / int8 / nf4 and decoding a few tokens (each in
   a fresh process; decoding touches every weight, so memory-mapped weights count), as a ratio to none.
Writes bench/results/inference_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness  # bench/harness.py: base model, servers, JSON

ROOT = harness.REPO
PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def copy_bandwidth_gbs() -> float:
    """Best of 5 copies of a 512 MiB buffer: bytes read + written per second."""
    import numpy as np

    source = np.ones(512 * 2**20 // 8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


def rss_of_load(store: Path, model_id: str, quantization: str, dtype: str) -> dict:
    """Load the model in a fresh process; report RSS growth and the weights' footprint."""
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
import torch, transformers, bitsandbytes, peft  # libraries first, so only the model is measured
from services.common.store import CheckpointStore
from services.engine.backends.base import LoadOptions, QuantizationConfig
from services.engine.backends import load_backend as default_backend_factory
from services.engine.backends.base import GenerationRequest
from services.engine.sampling import SamplingConfig
before = rss()
backend = default_backend_factory('transformers', CheckpointStore({str(store)!r}).path_of({model_id!r}),
                                  LoadOptions(quantization=QuantizationConfig(type={quantization!r}), dtype={dtype!r}))
# Decode a few tokens first: every weight is then touched, so memory-mapped weights count as resident too.
list(backend.generate(GenerationRequest('m', backend.tokenizer('Hello')['input_ids'],
                                        SamplingConfig(temperature=0.0, max_new_tokens=4))))
print(json.dumps({{'rss_bytes': rss() - before, 'footprint_bytes': backend.memory_bytes()}}))
backend.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


class RawTransformers:
    def __init__(self, path: Path, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        self.inputs = self.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True)
        self.parameters = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def run(self, new_tokens: int) -> float:
        with self.torch.no_grad():
            started = time.perf_counter()
            out = self.model.generate(**self.inputs, do_sample=False, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens)
            elapsed = time.perf_counter() - started
        assert out.shape[1] - self.inputs["input_ids"].shape[1] == new_tokens
        return new_tokens / elapsed


def grpc_once(client, model_id: str, new_tokens: int) -> tuple[float, float]:
    """(tokens/s end to end, client-measured time to first token in ms) of one greedy 128-token stream."""
    started = time.perf_counter()
    first = None
    tokens = 0
    for response in client.generate(model_id, messages=PROMPT, temperature=0.0, max_new_tokens=new_tokens,
                                    ignore_eos=True):
        if response.token_ids and first is None:
            first = time.perf_counter()
        tokens += len(response.token_ids)
    elapsed = time.perf_counter() - started
    assert tokens == new_tokens, tokens
    return tokens / elapsed, (first - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=harness.default_store())
    parser.add_argument("--model-id", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ttft-requests", type=int, default=20)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="only the memory part")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inference_throughput.json")
    args = parser.parse_args()
    with harness.scratch_dir("lmforge-inference-bench-") as tmp:
        args.store = harness.ensure_base(args.store, args.model_id, tmp)
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    if args.memory_only:
        memory = {q: rss_of_load(args.store, args.model_id, q, "float32") for q in ("none", "int8", "nf4")}
        for q, m in memory.items():
            print(f"  memory {q:5}  RSS +{m['rss_bytes'] / 2**20:6.0f} MiB (x{m['rss_bytes'] / memory['none']['rss_bytes']:.2f})"
                  f"  weights {m['footprint_bytes'] / 2**20:6.0f} MiB "
                  f"(x{m['footprint_bytes'] / memory['none']['footprint_bytes']:.2f})")
        return 0

    from lmforge.client import InferenceClient

    raw = RawTransformers(args.store / "models" / args.model_id, args.dtype)
    result: dict = {"model": args.model_id, "dtype": args.dtype, "new_tokens": args.new_tokens,
                    "cpus": os.cpu_count()}
    with harness.inference_server(args.store) as address:
        with InferenceClient(address, timeout=600) as client:
            client.load_model(args.model_id, dtype=args.dtype)
            raw.run(8), grpc_once(client, args.model_id, 8)  # warm-up both
            raw_tps, grpc_tps = [], []
            for _ in range(args.repeats):  # alternate, so drift hits both alike
                raw_tps.append(raw.run(args.new_tokens))
                grpc_tps.append(grpc_once(client, args.model_id, args.new_tokens)[0])
            ttft = [grpc_once(client, args.model_id, 1)[1] for _ in range(args.ttft_requests)]
            client.unload_model(args.model_id)
    bandwidth = copy_bandwidth_gbs()
    result["single_stream"] = {
        "raw_tokens_per_second": statistics.median(raw_tps), "grpc_tokens_per_second": statistics.median(grpc_tps),
        "ratio_grpc_over_raw": statistics.median(grpc_tps) / statistics.median(raw_tps), "goal": 0.95,
        "raw_runs": raw_tps, "grpc_runs": grpc_tps}
    result["bandwidth_ceiling"] = {
        "copy_bandwidth_gb_s": bandwidth, "weight_bytes": raw.parameters,
        "ceiling_tokens_per_second": bandwidth * 1e9 / raw.parameters,
        "raw_share_of_ceiling": statistics.median(raw_tps) / (bandwidth * 1e9 / raw.parameters)}
    result["time_to_first_token_ms"] = {"p50": percentile(ttft, 50), "p99": percentile(ttft, 99),
                                        "requests": len(ttft)}
    if not args.skip_memory:
        memory = {q: rss_of_load(args.store, args.model_id, q, "float32") for q in ("none", "int8", "nf4")}
        result["memory"] = {q: {**m, "rss_ratio_to_none": m["rss_bytes"] / memory["none"]["rss_bytes"],
                                "footprint_ratio_to_none": m["footprint_bytes"] / memory["none"]["footprint_bytes"]}
                            for q, m in memory.items()}

    s, c, t = result["single_stream"], result["bandwidth_ceiling"], result["time_to_first_token_ms"]
    print(f"inference: {args.model_id} {args.dtype}, {args.new_tokens}-token greedy answers, {os.cpu_count()} CPUs")
    print(f"  single stream   raw transformers {s['raw_tokens_per_second']:7.1f} tok/s | gRPC "
          f"{s['grpc_tokens_per_second']:7.1f} tok/s | ratio {s['ratio_grpc_over_raw']:.3f} (goal >= 0.95)")
    print(f"  ceiling         {c['copy_bandwidth_gb_s']:.1f} GB/s copy bandwidth / {c['weight_bytes'] / 1e6:.0f} MB "
          f"weights = {c['ceiling_tokens_per_second']:.0f} tok/s; raw reaches {c['raw_share_of_ceiling']:.0%}")
    print(f"  time to first token (gRPC, client side) p50 {t['p50']:.1f} ms, p99 {t['p99']:.1f} ms")
    for q, m in result.get("memory", {}).items():
        print(f"  memory {q:5}  RSS +{m['rss_bytes'] / 2**20:6.0f} MiB (x{m['rss_ratio_to_none']:.2f})  weights "
              f"{m['footprint_bytes'] / 2**20:6.0f} MiB (x{m['footprint_ratio_to_none']:.2f})")
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
