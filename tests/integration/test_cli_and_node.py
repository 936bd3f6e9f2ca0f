"""The `lmforge` CLI and the Node client against a real trainer server (tiny model, real training steps).

Needs the fixtures of tests/conftest.py: `trainer_server` (has `.address`, "127.0.0.1:PORT"),
`tiny_model_id` (a tiny model in the store) and `demo_dataset_id` (an uploaded small SFT dataset).
The Node test is skipped without `node` on PATH or without clients/node/node_modules (`cd clients/node &&
npm install`).

Run: .venv/bin/python -m pytest tests/integration/test_cli_and_node.py -q
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.v1 import trainer_pb2
from tests.helpers import sft_request

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "examples" / "data" / "sft_broken.jsonl"
NODE_DIR = ROOT / "clients" / "node"
TRAIN_TIMEOUT_S = 540
ROW_LINE = re.compile(r"^row (\d+)  ", re.MULTILINE)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_TRAINER_ADDRESS"}
    client_src = str(ROOT / "clients" / "python")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (client_src, env.get("PYTHONPATH", "")) if p)
    return env


def lmforge(server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a separate process), against `server`."""
    return subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "--address", server.address, *args],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout,
    )


def _explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_validate_reports_every_bad_row(trainer_server):
    result = lmforge(trainer_server, "datasets", "validate", str(BROKEN.relative_to(ROOT)), "--method", "sft")
    assert result.returncode == 1, _explain(result)
    rows = {int(n) for n in ROW_LINE.findall(result.stdout)}
    # examples/data/README.md: rows 2, 3, 4, 5 and 7 are among the broken ones; rows 1 and 6 are valid.
    assert {2, 3, 4, 5, 7} <= rows, _explain(result)
    assert not {1, 6} & rows, _explain(result)
    assert "not ok" in result.stdout


def test_cli_train_follow_then_list_jobs_and_checkpoints(trainer_server, tiny_model_id, demo_dataset_id):
    result = lmforge(
        trainer_server, "train", "--base-model", tiny_model_id, "--dataset", demo_dataset_id,
        "--max-steps", "3", "--max-seq-length", "128", "--follow", timeout=TRAIN_TIMEOUT_S,
    )
    assert result.returncode == 0, _explain(result)
    assert "SUCCEEDED" in result.stdout and "result checkpoint:" in result.stdout, _explain(result)
    job_id = result.stdout.splitlines()[0].strip()
    checkpoint_id = re.search(r"^result checkpoint: (\S+)$", result.stdout, re.MULTILINE).group(1)
    assert re.search(r"step 3(/3)?\b", result.stdout), _explain(result)  # metrics lines (non-TTY: one per event)
    assert "\x1b" not in result.stdout + result.stderr, _explain(result)  # a pipe gets plain text: no rich codes

    listed = lmforge(trainer_server, "jobs", "list")
    assert listed.returncode == 0, _explain(listed)
    assert any(line.startswith(job_id) and "SUCCEEDED" in line for line in listed.stdout.splitlines()), \
        _explain(listed)
    assert listed.stdout.split("\n", 1)[0].split() == ["ID", "NAME", "STATE", "METHOD", "STEP", "LOSS", "CREATED",
                                                      "RESULT"], _explain(listed)
    assert "\x1b" not in listed.stdout, _explain(listed)
    only_running = lmforge(trainer_server, "jobs", "list", "--state", "running", "--json")
    assert only_running.returncode == 0 and job_id not in only_running.stdout, _explain(only_running)

    got = lmforge(trainer_server, "--json", "jobs", "get", job_id)
    assert got.returncode == 0, _explain(got)
    job = json.loads(got.stdout)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["result_checkpoint_id"] == checkpoint_id

    ckpts = lmforge(trainer_server, "checkpoints", "--job", job_id)
    assert ckpts.returncode == 0 and checkpoint_id in ckpts.stdout, _explain(ckpts)
    final_rows = [line.split() for line in ckpts.stdout.splitlines() if line.startswith(checkpoint_id)]
    assert len(final_rows) == 1 and job_id in final_rows[0] and "yes" in final_rows[0], _explain(ckpts)  # FINAL
    as_json = lmforge(trainer_server, "checkpoints", "--job", job_id, "--json")
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert entries and all(e["job_id"] == job_id for e in entries), _explain(as_json)
    assert [e["id"] for e in entries if e.get("is_final")] == [checkpoint_id]

    # Replaying the history: gap-free sequences from 1, ending with the terminal state, then the job.
    replay = lmforge(trainer_server, "--json", "metrics", job_id, "--no-follow")
    assert replay.returncode == 0, _explain(replay)
    *events, final = [json.loads(line) for line in replay.stdout.splitlines()]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["state_change"]["state"] == "JOB_STATE_SUCCEEDED"
    assert final["id"] == job_id
    resumed = lmforge(trainer_server, "--json", "metrics", job_id, "--after", "2")
    assert [int(json.loads(x)["sequence"]) for x in resumed.stdout.splitlines()[:-1]] == \
        list(range(3, len(events) + 1)), _explain(resumed)


def test_cli_errors_exit_2_with_the_status_code(trainer_server):
    result = lmforge(trainer_server, "jobs", "get", "no-such-job")
    assert result.returncode == 2, _explain(result)
    assert result.stderr.startswith("error: NOT_FOUND: "), _explain(result)


def test_cli_datasets_stats(trainer_server, trainer_client, tiny_model_id):
    """`lmforge datasets stats FILE --base-model M --max-seq-length N --epochs E` (README, docs/trainer.md):
    uploads the file, prints the report; --json prints exactly what DescribeDataset returns."""
    demo = ROOT / "examples" / "data" / "sft_demo.jsonl"
    args = ("datasets", "stats", str(demo.relative_to(ROOT)), "--base-model", tiny_model_id,
            "--max-seq-length", "64", "--method", "sft", "--epochs", "2")
    result = lmforge(trainer_server, *args)
    assert result.returncode == 0, _explain(result)
    expected = trainer_client.describe_dataset(trainer_client.upload_dataset(demo).id, tiny_model_id, 64,
                                               method="sft", epochs=2)
    assert f"tokens      {expected.total_tokens:,} total, {expected.trained_tokens:,} trained" in result.stdout
    assert f"epochs      2 -> {expected.estimated_trained_tokens:,} trained tokens" in result.stdout
    assert re.search(r"^zh +\d+ texts: [\d.]+ characters/token", result.stdout, re.MULTILINE), _explain(result)
    assert re.search(r"^en +\d+ texts: [\d.]+ characters/token", result.stdout, re.MULTILINE), _explain(result)
    as_json = lmforge(trainer_server, "--json", *args)
    assert as_json.returncode == 0, _explain(as_json)
    got = json.loads(as_json.stdout)
    assert int(got["total_tokens"]) == expected.total_tokens and int(got["rows"]) == expected.rows == 64
    assert int(got["truncated_sequences"]) == expected.truncated_sequences

    bad = lmforge(trainer_server, "datasets", "stats", expected.dataset_id, "--base-model", tiny_model_id,
                  "--max-seq-length", "0")
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "max_seq_length" in bad.stderr, _explain(bad)

    pairs = trainer_client.upload_dataset(ROOT / "examples" / "data" / "preference_demo.jsonl").id
    dpo = lmforge(trainer_server, "datasets", "stats", pairs, "--base-model", tiny_model_id, "--max-seq-length", "512",
                  "--method", "dpo", "--json")
    assert dpo.returncode == 0, _explain(dpo)
    got = json.loads(dpo.stdout)
    assert got["method"] == "dpo" and int(got["sequences"]) == 2 * int(got["rows"]) > 0, _explain(dpo)


def test_cli_jobs_pause_and_resume(trainer_server, trainer_client, tiny_model_id, demo_dataset_id):
    """`lmforge jobs pause JOB` and `lmforge jobs resume JOB` (README, docs/trainer.md)."""
    job = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=100_000))
    for event in trainer_client.stream_metrics(job.id, follow=True):
        if event.WhichOneof("payload") == "metrics":
            break
    paused = lmforge(trainer_server, "jobs", "pause", job.id)
    assert paused.returncode == 0 and paused.stdout.strip() == f"{job.id}: PAUSED", _explain(paused)
    resumed = lmforge(trainer_server, "jobs", "resume", job.id)
    assert resumed.returncode == 0 and resumed.stdout.strip() == f"{job.id}: QUEUED (attempt 2)", _explain(resumed)
    again = lmforge(trainer_server, "jobs", "resume", job.id)
    assert again.returncode == 2 and again.stderr.startswith("error: FAILED_PRECONDITION: "), _explain(again)
    assert trainer_client.cancel_job(job.id).state == trainer_pb2.JOB_STATE_CANCELLED


# ----------------------------------------------------------------------------------------------- Node


def test_node_client_trains_and_streams_gap_free(trainer_server, tiny_model_id, demo_dataset_id):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.skip("clients/node/node_modules is missing: run `cd clients/node && npm install`")
    result = subprocess.run(
        [node, str(NODE_DIR / "train.js"), "--address", trainer_server.address, "--base-model", tiny_model_id,
         "--dataset", demo_dataset_id, "--max-steps", "3", "--max-seq-length", "128"],
        cwd=ROOT, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S,
    )
    assert result.returncode == 0, _explain(result)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    sequences = [e["sequence"] for e in events]
    assert sequences and sequences[0] == 1, _explain(result)
    assert all(b > a for a, b in zip(sequences, sequences[1:])), sequences
    assert sequences == list(range(1, len(sequences) + 1)), sequences  # the contract: no gaps
    kinds = {e["kind"] for e in events}
    assert {"metrics", "state", "checkpoint"} <= kinds, kinds
    assert events[-1]["kind"] == "state" and events[-1]["state"] == "SUCCEEDED", events[-1]
    assert "result checkpoint:" in result.stderr


NODE_DESCRIBE = """
const { trainerClient } = require(process.argv[1]);
const [address, datasetId, baseModelId] = process.argv.slice(2);
trainerClient(address).DescribeDataset({ datasetId, baseModelId, maxSeqLength: 64, epochs: 2 }, (err, stats) => {
  if (err) { console.error(err.details); process.exit(1); }
  console.log(JSON.stringify(stats));
});
"""


def test_node_client_describes_a_dataset(trainer_server, trainer_client, tiny_model_id, demo_dataset_id):
    """DescribeDataset is a read call: the Node client reaches it like every RPC (no per-call wrapper)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.skip("clients/node/node_modules is missing: run `cd clients/node && npm install`")
    result = subprocess.run([node, "-e", NODE_DESCRIBE, str(NODE_DIR / "index.js"), trainer_server.address,
                             demo_dataset_id, tiny_model_id], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, _explain(result)
    stats = json.loads(result.stdout)
    expected = trainer_client.describe_dataset(demo_dataset_id, tiny_model_id, 64, epochs=2)
    assert int(stats["totalTokens"]) == expected.total_tokens and stats["format"] == "DATASET_FORMAT_MESSAGES"
    assert int(stats["estimatedTrainedTokens"]) == expected.estimated_trained_tokens


NODE_PAUSE_RESUME = """
const { trainerClient, isTerminal, grpc } = require(process.argv[1]);
const [address, jobId] = process.argv.slice(2);
const client = trainerClient(address);
client.ResumeJob({ jobId }, (err) => {
  if (!err || err.code !== grpc.status.FAILED_PRECONDITION) { console.error('resume:', err); process.exit(1); }
  client.PauseJob({ jobId: 'job-unknown' }, (err2) => {
    if (!err2 || err2.code !== grpc.status.NOT_FOUND) { console.error('pause:', err2); process.exit(1); }
    console.log(JSON.stringify({ paused: isTerminal('JOB_STATE_PAUSED'), resumeError: err.details }));
  });
});
"""


def test_node_client_has_pause_and_resume(trainer_server, trainer_client, tiny_model_id, demo_dataset_id):
    """PauseJob / ResumeJob reach the server from Node; PAUSED counts as a state a follower stops at."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.skip("clients/node/node_modules is missing: run `cd clients/node && npm install`")
    done = trainer_client.start_training(sft_request(tiny_model_id, demo_dataset_id, max_steps=1))
    assert trainer_client.wait(done.id).state == trainer_pb2.JOB_STATE_SUCCEEDED
    result = subprocess.run([node, "-e", NODE_PAUSE_RESUME, str(NODE_DIR / "index.js"), trainer_server.address, done.id],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, _explain(result)
    got = json.loads(result.stdout)
    assert got["paused"] is True and "already succeeded" in got["resumeError"]
