"""`pip install ./clients/python` from a fresh clone gives a working client: the generated `lmforge/v1` code
is committed (and kept equal to protos/ by `scripts/gen_protos.py --check`), so the package needs no build
step. The installed client, alone on its path, talks to both services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_generated_code_matches_the_protos():
    result = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_client_installed_from_a_fresh_clone_calls_both_services(tmp_path, trainer_server, store_root,
                                                                 tiny_model_id):
    from services.inference.server import InferenceServer

    clone, target = tmp_path / "clone", tmp_path / "site"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    # --no-deps / --no-build-isolation: grpcio, protobuf and setuptools come from this environment; the
    # lmforge package itself only from the clone.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(clone / "clients" / "python")], check=True, timeout=300)
    inference = InferenceServer(store_root, port=0)
    inference.serve()
    try:
        code = (
            "import json, sys, lmforge\n"
            "from lmforge.client import InferenceClient, TrainerClient\n"
            f"with TrainerClient({trainer_server.address!r}) as t, InferenceClient({inference.address!r}) as i:\n"
            "    jobs = list(t.list_jobs())\n"
            "    models = [m.id for m in i.list_models().available]\n"
            "print(json.dumps({'file': lmforge.__file__, 'models': models, 'jobs': len(jobs)}))\n"
        )
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(target)}
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        assert answer["file"].startswith(str(target)), "the client must come from the fresh install"
        assert tiny_model_id in answer["models"]
    finally:
        inference.stop(grace_seconds=1)
