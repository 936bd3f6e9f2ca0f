"""The lmforge demo: LoRA SFT of the real SmolLM2-135M-Instruct through the trainer service.

    make demo                       # sets everything up first, then runs this
    .venv/bin/python scripts/demo.py [--max-steps 40] [--home .lmforge]

It starts the trainer service on a free localhost port, then does what a user would do with the CLI:
uploads the bundled Chinese/English instruction set (examples/data/sft_demo.jsonl), starts the job of
examples/jobs/sft_lora.yaml, follows its metrics live, and prints the final state and the trained
adapter's store id. The server stops at the end; everything stays in the --home directory.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = "examples/data/sft_demo.jsonl"
JOB_FILE = "examples/jobs/sft_lora.yaml"


def start_trainer(home: Path, store: Path) -> tuple[subprocess.Popen, str]:
    log_path = home / "trainer-demo.log"
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.trainer.server", "--port", "0", "--home", str(home / "trainer"),
         "--store", str(store)],
        stdout=subprocess.PIPE, stderr=open(log_path, "ab"), text=True, cwd=ROOT)
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        process.kill()
        sys.exit(f"the trainer did not start; see {log_path}")
    return process, match.group(1)


def lmforge(address: str, *args: str) -> int:
    """Run one `lmforge` CLI command in this process, echoing it as a user would type it."""
    from lmforge.cli import main as cli_main

    print(f"\n$ lmforge {shlex.join(args)}", flush=True)
    return cli_main(["--address", address, *args])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("LMFORGE_HOME", ROOT / ".lmforge")))
    parser.add_argument("--max-steps", type=int, default=None, help="override the job file's max_steps")
    args = parser.parse_args()
    home = args.home.resolve()
    store = Path(os.environ.get("LMFORGE_STORE", home / "store")).resolve()
    started = time.monotonic()

    from services.common.model_import import SMOLLM2_ID, import_smollm2
    from services.common.store import CheckpointStore

    if not CheckpointStore(store).exists(SMOLLM2_ID):
        print(f"importing {SMOLLM2_ID} into {store} ...", flush=True)
        import_smollm2(CheckpointStore(store))

    process, address = start_trainer(home, store)
    print(f"trainer service listening on {address} (state in {home})", flush=True)
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
            print(f"trained adapter id: {job.result_checkpoint_id} (base {job.request.base_model_id})")
    finally:
        process.terminate()
        process.wait(timeout=60)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s "
          f"({'SUCCEEDED' if code == 0 else 'the job did not succeed'})")
    return code


if __name__ == "__main__":
    sys.exit(main())
