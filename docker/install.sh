#!/usr/bin/env bash
# Shared by docker/trainer.Dockerfile and docker/inference.Dockerfile: the system packages, a non-root user,
# then scripts/setup.sh, the same pinned lock and steps CI runs (`make test` calls it).
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates
rm -rf /var/lib/apt/lists/*
useradd --create-home --uid 10001 lmforge
mkdir -p /data && chown lmforge:lmforge /data
cd /opt/lmforge
PYTHON=python3.11 LMFORGE_SETUP_BASE=0 scripts/setup.sh
rm -rf /root/.cache
