"""DescribeDataset (the token calculator) vs ValidateDataset on the same file, through the trainer service.

    .venv/bin/python bench/dataset_stats.py                       # 300k short zh/en SFT rows, smollm2-135m-instruct
    .venv/bin/python bench/dataset_stats.py --rows 20000 --base-model tiny-bench --store /tmp/benchdev/store

Writes a JSONL file of `--rows` short chat rows (English and Chinese, one row in 50 a duplicate), uploads it
to an in-process trainer, then times `--repeats` ValidateDataset and DescribeDataset calls from the client
(median of each). Prints rows/s of both and their ratio, and the server's own seconds for the statistics.
Results: bench/results/dataset_stats.json. Exits 2 if the base model is missing (other than SmolLM2).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import harness

ENGLISH = [("What is the capital of {}?", "The capital of {} is its largest city."),
           ("How do I heat {} in the forge?", "Heat {} until it glows orange, then work it on the anvil."),
           ("Name a tool used with {}.", "Tongs hold {} while the hammer shapes it.")]
CHINESE = [("{}的首都是哪里？", "{}的首都是它最大的城市。"),
           ("怎样在锻造炉里加热{}？", "把{}加热到发出橙光，然后在铁砧上锻打。"),
           ("使用{}时需要什么工具？", "用钳子夹住{}，再用锤子塑形。")]
WORDS = ["France", "iron", "steel", "copper", "Japan", "bronze", "Kenya", "silver"]
HANZI = ["法国", "铁", "钢", "铜", "日本", "青铜", "肯尼亚", "银"]


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    previous = None
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            if previous and i % 50 == 0:
                f.write(previous)
                continue
            zh = rng.random() < 0.5
            question, answer = rng.choice(CHINESE if zh else ENGLISH)
            word = rng.choice(HANZI if zh else WORDS)
            line = json.dumps({"messages": [{"role": "user", "content": question.format(word) + f" #{i}"},
                                            {"role": "assistant", "content": answer.format(word)}]},
                              ensure_ascii=False) + "\n"
            f.write(line)
            previous = line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-model", default=harness.SMOLLM2_ID)
    parser.add_argument("--store", type=Path, default=harness.default_store())
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=harness.REPO / "bench" / "results" / "dataset_stats.json")
    args = parser.parse_args()

    from lmforge.client import TrainerClient

    with harness.scratch_dir("lmforge-bench-stats-") as tmp:
        store = harness.ensure_base(args.store, args.base_model, tmp)
        data = tmp / "rows.jsonl"
        write_rows(data, args.rows)
        busy = harness.cpu_busy()
        with harness.trainer_service(tmp / "home", store, in_process=True) as service, \
                TrainerClient(service.address, timeout=3600) as client:
            dataset_id = client.upload_dataset(data).id
            validate_s, describe_s, server_s = [], [], []
            stats = None
            for _ in range(args.repeats):
                started = time.perf_counter()
                report = client.validate_dataset(dataset_id, method="sft")
                validate_s.append(time.perf_counter() - started)
                assert report.ok and report.total_rows == args.rows, report
                started = time.perf_counter()
                stats = client.describe_dataset(dataset_id, args.base_model, args.max_seq_length, method="sft")
                describe_s.append(time.perf_counter() - started)
                server_s.append(stats.seconds)
    validate, describe = harness.median(validate_s), harness.median(describe_s)
    result = {
        "rows": args.rows, "base_model": args.base_model, "repeats": args.repeats, "cpu_busy_before": busy,
        "validate_seconds": validate_s, "describe_seconds": describe_s, "describe_server_seconds": server_s,
        "validate_rows_per_second": args.rows / validate, "describe_rows_per_second": args.rows / describe,
        "describe_over_validate_time": describe / validate,
        "tokens": stats.total_tokens, "tokens_per_second": stats.total_tokens / describe,
        "duplicate_rows": stats.duplicate_rows,
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": harness.cpu_model(),
                    "tokenizers": harness.package_version("tokenizers")},
    }
    print()
    print(f"DescribeDataset vs ValidateDataset, {args.rows:,} short zh/en SFT rows, {args.base_model}")
    print(f"machine: {result['machine']['cpu_count']} CPUs ({result['machine']['cpu_model']}), "
          f"tokenizers {result['machine']['tokenizers']}")
    harness.busy_warning([busy], "the timings are noisy")
    harness.table((22, 12, 14), [
        ("", "seconds", "rows/s"),
        ("ValidateDataset", harness.fmt(validate, ".2f"), f"{result['validate_rows_per_second']:,.0f}"),
        ("DescribeDataset", harness.fmt(describe, ".2f"), f"{result['describe_rows_per_second']:,.0f}",
         harness.Note(f"{result['describe_over_validate_time']:.1f}x validation's time; "
                      f"{result['tokens_per_second']:,.0f} tokens/s")),
    ])
    harness.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
