#!/usr/bin/env bash
# The images' entrypoint: the base model into the mounted store (once), then the server given as arguments.
set -euo pipefail
/opt/lmforge/.venv/bin/lmforge-store --root "$LMFORGE_STORE" import-smollm2 --if-missing
exec "$@"
