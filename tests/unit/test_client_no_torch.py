"""The Python client installs and imports without torch (DESIGN.md §1): nothing it imports pulls torch in,
and its package declares no heavy dependency.

Run: .venv/bin/python -m pytest tests/unit/test_client_no_torch.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PYPROJECT = ROOT / "clients" / "python" / "pyproject.toml"
HEAVY = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "vllm")


def test_importing_the_client_and_cli_does_not_import_torch():
    code = (
        "import json, sys\n"
        "import lmforge, lmforge.client, lmforge.cli\n"
        "from lmforge import InferenceClient, TrainerClient\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    env_path = str(ROOT / "clients" / "python")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**_env(), "PYTHONPATH": env_path},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_client_package_declares_no_heavy_dependency():
    project = tomllib.loads(CLIENT_PYPROJECT.read_text())["project"]
    deps = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        deps += extra
    names = [d.lower() for d in deps]
    assert not [d for d in names if any(h in d for h in ("torch", "transformers"))], names
    # what the client and the CLI import (tables, progress and colours: rich) is declared
    assert {"grpcio", "protobuf", "pyyaml", "rich"} <= {d.split(">")[0].split("=")[0].strip() for d in names}, names
    assert project["scripts"]["lmforge"] == "lmforge.cli:main"


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
