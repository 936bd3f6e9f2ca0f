"""The lmforge demo: LoRA SFT of the real SmolLM2-135M-Instruct, then chat with it, over gRPC.

    make demo                       # sets everything up first, then runs this
    .venv/bin/python scripts/demo.py [--max-steps 40] [--home .lmforge]

It starts the trainer service on a free localhost port, then does what a user would do with the CLI:
uploads the bundled Chinese/English instruction set (examples/data/sft_demo.jsonl), starts the job of
examples/jobs/sft_lora.yaml, follows its metrics live, and prints the final state and the trained
adapter's store id. Then it starts the inference service and asks the base model and the base model
with the new adapter the same questions (English and Chinese), printing the answers side by side.
The servers stop at the end; everything stays in the --home directory.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = "examples/data/sft_demo.jsonl"
JOB_FILE = "examples/jobs/sft_lora.yaml"


# (system prompt of the training rows in that language, question): both models get the same messages.
QUESTIONS = [("You are Forge, the lmforge assistant.", "Who are you?"),
             ("你是 lmforge 的助手 Forge。", "什么是 LoRA 微调？")]
COLUMN = 54


def start_service(name: str, module: str, args: list[str], home: Path) -> tuple[subprocess.Popen, str]:
    """Start `python -m module --port 0 ...`; return it and the address it printed."""
    log_path = home / f"{name}-demo.log"
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-m", module, "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=open(log_path, "ab"), text=True, cwd=ROOT)
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        process.kill()
        sys.exit(f"the {name} did not start; see {log_path}")
    return process, match.group(1)


def side_by_side(left_title: str, left: str, right_title: str, right: str) -> str:
    left_lines = textwrap.wrap(left, COLUMN) or [""]
    right_lines = textwrap.wrap(right, COLUMN) or [""]
    rows = [f"  {left_title:<{COLUMN}} | {right_title}", f"  {'-' * COLUMN} | {'-' * COLUMN}"]
    for i in range(max(len(left_lines), len(right_lines))):
        a = left_lines[i] if i < len(left_lines) else ""
        b = right_lines[i] if i < len(right_lines) else ""
        rows.append(f"  {a:<{COLUMN}} | {b}")
    return "\n".join(rows)


def chat_comparison(address: str, model_id: str, adapter_id: str) -> None:
    """Ask the base model and the base + adapter the same questions with the same settings (greedy, a mild
    repetition penalty against the loops small models fall into), so the difference is the adapter."""
    from lmforge.client import InferenceClient

    system, question = QUESTIONS[0]
    print(f"\n$ lmforge chat {model_id} \"{question}\" --system \"{system}\" [--adapter {adapter_id}]", flush=True)
    with InferenceClient(address, timeout=300) as client:
        for system, question in QUESTIONS:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            base, _ = client.chat(model_id, messages, temperature=0.0, repetition_penalty=1.15, max_new_tokens=60)
            tuned, _ = client.chat(model_id, messages, adapter_id=adapter_id, temperature=0.0, repetition_penalty=1.15,
                                   max_new_tokens=60)
            print(f"\nQ: {question}")
            print(side_by_side("base model", base.strip(), "base + trained adapter", tuned.strip()), flush=True)


def lmforge(address: str, *args: str) -> int:
    """Run one `lmforge` CLI command in this process, echoing it as a user would type it."""
    from lmforge.cli import main as cli_main

    print(f"\n$ lmforge {shlex.join(args)}", flush=True)
    return cli_main(["--address", address, *args])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LMFORGE_HOME", ROOT / ".lmforge")))
    parser.add_argument("--max-steps", type=int, default=None, help="override the job file's max_steps")
    parser.add_argument("--no-chat", action="store_true", help="stop after training")
    args = parser.parse_args()
    home = args.home.resolve()
    store = Path(os.environ.get("LMFORGE_STORE", home / "store")).resolve()
    started = time.monotonic()

    from services.common.model_import import SMOLLM2_ID, import_smollm2
    from services.common.store import CheckpointStore

    if not CheckpointStore(store).exists(SMOLLM2_ID):
        print(f"importing {SMOLLM2_ID} into {store} ...", flush=True)
        import_smollm2(CheckpointStore(store))

    process, address = start_service("trainer", "services.trainer.server",
                                     ["--home", str(home / "trainer"), "--store", str(store)], home)
    print(f"trainer service listening on {address} (state in {home})", flush=True)
    adapter_id = ""
    try:
        lmforge(address, "checkpoints", "--kind", "base")
        train_args = ["train", "-f", JOB_FILE, "--dataset", DATASET, "--name", "demo-lora-sft", "--follow"]
        if args.max_steps:
            train_args += ["--max-steps", str(args.max_steps)]
        code = lmforge(address, *train_args)
        lmforge(address, "jobs", "list")
        from lmforge.client import TrainerClient, job_state_name

        with TrainerClient(address) as client:
            job = next(client.list_jobs(page_size=1))
        print(f"\njob {job.id}: {job_state_name(job.state)}")
        if job.result_checkpoint_id:
            adapter_id = job.result_checkpoint_id
            print(f"trained adapter id: {adapter_id} (base {job.request.base_model_id})")
    finally:
        process.terminate()
        process.wait(timeout=60)
    if adapter_id and not args.no_chat:
        inference, inference_address = start_service("inference", "services.inference.server",
                                                     ["--store", str(store)], home)
        print(f"\ninference service listening on {inference_address}", flush=True)
        try:
            chat_comparison(inference_address, SMOLLM2_ID, adapter_id)
        finally:
            inference.terminate()
            inference.wait(timeout=60)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s "
          f"({'SUCCEEDED' if code == 0 else 'the job did not succeed'})")
    return code


if __name__ == "__main__":
    sys.exit(main())
