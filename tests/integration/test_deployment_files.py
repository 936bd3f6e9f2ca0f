"""docker/: no daemon and no registry can be reached here, so the images are not built in the tests. What can
be checked is: the compose file parses and wires what the docs say (existing Dockerfiles, the store volume
mounted in both services, health checks through the probe on the port each server listens on, the metrics
ports Prometheus scrapes), the images run the same setup script CI runs, as a non-root user, with no secret
baked in, the Prometheus configuration is valid (promtool), and the health probe works against a real server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SERVICES = {"trainer": ("lmforge.v1.TrainerService", "lmforge-trainer"),
            "inference": ("lmforge.v1.InferenceService", "lmforge-inference")}


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def dockerfile(name: str) -> str:
    return (DOCKER / f"{name}.Dockerfile").read_text()


def instruction(text: str, keyword: str) -> str:
    """The (continued) line of the last `keyword` instruction of a Dockerfile."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line.startswith(keyword + " ")][-1][len(keyword) + 1:]


@pytest.mark.parametrize("name", SERVICES)
def test_compose_service_builds_an_existing_dockerfile_and_mounts_the_shared_store(name):
    service = compose()["services"][name]
    context = (DOCKER / service["build"]["context"]).resolve()
    assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
    assert "lmforge_state:/data" in service["volumes"] and "lmforge_state" in compose()["volumes"]
    text = dockerfile(name)
    assert "LMFORGE_STORE=/data/store" in instruction(text, "ENV")


@pytest.mark.parametrize("name", SERVICES)
def test_health_checks_probe_the_port_the_server_listens_on(name):
    service_name, script = SERVICES[name]
    text = dockerfile(name)
    command = json.loads(instruction(text, "CMD"))
    assert command[0].endswith("/" + script)
    port = command[command.index("--port") + 1]
    probe = ["/opt/lmforge/.venv/bin/python", "-m", "services.common.health_probe", f"127.0.0.1:{port}", service_name]
    assert json.loads(instruction(text, "HEALTHCHECK").split("CMD ", 1)[1]) == probe
    assert compose()["services"][name]["healthcheck"]["test"] == ["CMD", *probe]
    assert f"{port}:{port}" in compose()["services"][name]["ports"]
    # Prometheus scrapes the metrics port the server serves
    metrics_port = command[command.index("--metrics-port") + 1]
    assert f"{name}:{metrics_port}" in (DOCKER / "prometheus.yml").read_text()


@pytest.mark.parametrize("name", SERVICES)
def test_images_install_as_ci_does_run_as_non_root_and_carry_no_secret(name):
    text = dockerfile(name)
    assert "RUN /opt/lmforge/docker/install.sh" in text
    assert "scripts/setup.sh" in (DOCKER / "install.sh").read_text()
    assert instruction(text, "USER") not in ("root", "0")
    assert not re.search(r"(?i)(api_key|password|secret|token)\s*=", instruction(text, "ENV"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".lmforge", "*.pem", "*.key"} <= set(ignored)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with the prometheus package")
def test_prometheus_configuration_is_valid():
    result = subprocess.run(["promtool", "check", "config", str(DOCKER / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_health_probe_against_a_real_server(trainer_server):
    def probe(*args):
        return subprocess.run([sys.executable, "-m", "services.common.health_probe", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    assert probe(trainer_server.address, "lmforge.v1.TrainerService").returncode == 0
    unknown = probe(trainer_server.address, "lmforge.v1.NoSuchService")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    assert probe("127.0.0.1:1").returncode == 1
