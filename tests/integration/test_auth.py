"""API keys on both servers: keys made by `lmforge-admin` (stored hashed), UNAUTHENTICATED for a missing,
unknown, revoked or expired key, PERMISSION_DENIED for a viewer that writes, health open, the clients and
the CLI sending LMFORGE_API_KEY, and a server on a non-loopback address refusing to start without keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lmforge.client import InferenceClient, TrainerClient
from services.common.auth import KeyFile
from tests.helpers import rpc_code, sft_request

ROOT = Path(__file__).resolve().parents[2]


def admin(keys: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "lmforge-admin"), "--keys", str(keys), *args],
                          capture_output=True, text=True, timeout=60)


def create_key(keys: Path, tenant: str, role: str, *extra: str) -> str:
    result = admin(keys, "keys", "create", "--tenant", tenant, "--role", role, *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, store_root):
    """A trainer and an inference server sharing one key file, before any key exists."""
    from services.inference.server import InferenceServer
    from services.trainer.server import TrainerServer

    tmp = tmp_path_factory.mktemp("auth")
    keys = tmp / "keys.json"
    trainer = TrainerServer(tmp / "home", store_root, port=0, keys_file=keys, on_shutdown="pause")
    inference = InferenceServer(store_root, port=0, keys_file=keys)
    inference.serve()
    yield keys, trainer, inference
    inference.stop(grace_seconds=1)
    trainer.stop(grace_seconds=2)


def test_keys_guard_every_call_once_one_exists(keyed, tiny_model_id):
    keys, trainer, inference = keyed
    # No key yet: a loopback server stays open.
    with TrainerClient(trainer.address, api_key="") as anonymous:
        list(anonymous.list_jobs())
    member = create_key(keys, "acme", "member")
    viewer = create_key(keys, "acme", "viewer", "--expires-in-days", "30")
    stored = keys.read_text()
    assert member not in stored and member.split("_")[2] not in stored, "keys are stored hashed"
    assert oct(keys.stat().st_mode & 0o777) == "0o600"

    with TrainerClient(trainer.address, api_key="") as anonymous:
        with pytest.raises(grpc.RpcError) as info:
            list(anonymous.list_jobs())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "LMFORGE_API_KEY" in info.value.details()
    forged = member[:-4] + ("aaaa" if not member.endswith("aaaa") else "bbbb")
    for bad in (forged, "lmf_nothex_x", "sk-something-else"):
        with TrainerClient(trainer.address, api_key=bad) as client:
            assert rpc_code(lambda: list(client.list_jobs())) == grpc.StatusCode.UNAUTHENTICATED

    with TrainerClient(trainer.address, api_key=viewer) as client:
        list(client.list_jobs())
        assert rpc_code(lambda: client.start_training(sft_request(tiny_model_id, "ds-0000"))) \
            == grpc.StatusCode.PERMISSION_DENIED
        assert rpc_code(lambda: client.upload_dataset(ROOT / "examples" / "data" / "sft_demo.jsonl")) \
            == grpc.StatusCode.PERMISSION_DENIED
    with TrainerClient(trainer.address, api_key=member) as client:
        # past the key check: the request itself is what fails
        assert rpc_code(lambda: client.start_training(sft_request(tiny_model_id, "ds-0000"))) \
            == grpc.StatusCode.NOT_FOUND
        assert client.upload_dataset(ROOT / "examples" / "data" / "sft_demo.jsonl").id

    # The inference service reads the same file: a viewer chats, but may not load or unload.
    with InferenceClient(inference.address, api_key=viewer) as client:
        done = list(client.generate(tiny_model_id, messages=[{"role": "user", "content": "你好"}], max_new_tokens=3))
        assert done[-1].finished.usage.completion_tokens > 0
        assert rpc_code(lambda: client.unload_model(tiny_model_id)) == grpc.StatusCode.PERMISSION_DENIED
    with InferenceClient(inference.address, api_key="") as client:
        assert rpc_code(lambda: client.list_models()) == grpc.StatusCode.UNAUTHENTICATED

    # Health stays open.
    with grpc.insecure_channel(trainer.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    # Revoking takes effect on the next call, with no restart; expired keys are refused too.
    key_id = viewer.split("_")[1]
    listed = admin(keys, "keys", "list")
    assert key_id in listed.stdout and "viewer" in listed.stdout and viewer not in listed.stdout
    assert admin(keys, "keys", "revoke", key_id).returncode == 0
    with TrainerClient(trainer.address, api_key=viewer) as client:
        with pytest.raises(grpc.RpcError) as info:
            list(client.list_jobs())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in info.value.details()
    expiring, record = KeyFile(keys).create("acme", "member", expires_in_days=1)
    data = json.loads(keys.read_text())
    for entry in data["keys"]:
        if entry["id"] == record.id:
            entry["expires_at"] = time.time() - 1
    keys.write_text(json.dumps(data))
    with TrainerClient(trainer.address, api_key=expiring) as client:
        with pytest.raises(grpc.RpcError) as info:
            list(client.list_jobs())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in info.value.details()

    # The CLI sends LMFORGE_API_KEY.
    env = {**os.environ, "LMFORGE_API_KEY": member, "LMFORGE_TRAINER_ADDRESS": trainer.address}
    cli = subprocess.run([str(Path(sys.executable).parent / "lmforge"), "jobs", "list"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    env["LMFORGE_API_KEY"] = ""
    cli = subprocess.run([str(Path(sys.executable).parent / "lmforge"), "jobs", "list"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0 and "UNAUTHENTICATED" in cli.stderr + cli.stdout


def test_admin_command_refuses_bad_roles_and_tenants(tmp_path):
    keys = tmp_path / "keys.json"
    assert admin(keys, "keys", "create", "--tenant", "acme", "--role", "owner").returncode == 2
    bad_tenant = admin(keys, "keys", "create", "--tenant", "Acme Corp", "--role", "member")
    assert bad_tenant.returncode == 2 and "tenant" in bad_tenant.stderr
    unknown = admin(keys, "keys", "revoke", "deadbeef")
    assert unknown.returncode == 2 and "no key 'deadbeef'" in unknown.stderr


@pytest.mark.parametrize("command", ["lmforge-trainer", "lmforge-inference"])
def test_a_server_on_a_public_address_needs_keys_or_insecure(tmp_path, store_root, command):
    env = {**os.environ, "LMFORGE_HOME": str(tmp_path)}
    args = [str(Path(sys.executable).parent / command), "--host", "0.0.0.0", "--port", "0", "--store",
            str(store_root)]
    refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "without API keys" in refused.stderr and "--insecure" in refused.stderr
    started = subprocess.Popen([*args, "--insecure"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert "listening on 0.0.0.0:" in started.stdout.readline()
    finally:
        started.terminate()
        started.wait(timeout=120)


NODE_LIST_JOBS = """
const { trainerClient } = require(process.argv[1]);
trainerClient(process.argv[2]).ListJobs({ pageSize: 5 }, (err) => {
  console.log(JSON.stringify({ code: err ? err.code : 0 }));
});
"""


def test_node_client_sends_the_api_key(keyed):
    import shutil

    keys, trainer, _ = keyed
    node = shutil.which("node")
    node_dir = ROOT / "clients" / "node"
    if node is None or not (node_dir / "node_modules").is_dir():
        pytest.skip("node or clients/node/node_modules is missing")
    key = create_key(keys, "acme", "viewer")

    def list_jobs(api_key: str) -> int:
        result = subprocess.run([node, "-e", NODE_LIST_JOBS, str(node_dir / "index.js"), trainer.address],
                                env={**os.environ, "LMFORGE_API_KEY": api_key}, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["code"]

    assert list_jobs(key) == grpc.StatusCode.OK.value[0]
    assert list_jobs("") == grpc.StatusCode.UNAUTHENTICATED.value[0]
