"""Every server command the README and docs show is a console script of the installed package."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = sorted(set(re.findall(r"\b(lmforge-(?:trainer|inference|store|admin))\b",
                                   "\n".join(p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")]))))


def test_every_documented_server_command_is_declared():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert DOCUMENTED and set(DOCUMENTED) <= set(declared), set(DOCUMENTED) - set(declared)


@pytest.mark.parametrize("command", DOCUMENTED)
def test_documented_command_runs(command):
    out = subprocess.run([str(Path(sys.executable).parent / command), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


DOCS_TEXT = "\n".join(p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md")])


@pytest.mark.parametrize("command", ["lmforge-trainer", "lmforge-inference"])
def test_every_documented_server_flag_exists(command):
    """`lmforge-trainer --metrics-port 9400` in a doc: the server's --help lists --metrics-port."""
    flags = {flag for line in re.findall(rf"{command}( [^\n`|]*)", DOCS_TEXT)
             for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line)}
    out = subprocess.run([str(Path(sys.executable).parent / command), "--help"], capture_output=True, text=True,
                         timeout=120)
    missing = sorted(flag for flag in flags if flag not in out.stdout)
    assert flags and not missing, missing
