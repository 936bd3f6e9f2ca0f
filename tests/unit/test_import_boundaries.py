"""The servers' import boundary: starting the trainer or inference server imports no ML library. The heavy
libraries load in the trainer's worker processes and in the inference backends, when a model is loaded.

    .venv/bin/python -m pytest tests/unit/test_import_boundaries.py -q

Each check runs in a fresh interpreter, so what other tests imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_MODULES = ["services.trainer.servicer", "services.trainer.server", "services.inference.servicer",
                  "services.inference.server"]
HEAVY = ["torch", "transformers", "datasets", "trl", "peft"]

# Run in the child: a finder that loads nothing, but notes for each heavy library the chain of `services`
# code running when it is first imported (module:line, outermost first), then the imports.
PROBE = """
import json, sys
heavy = {heavy!r}
found = {{}}

class Witness:
    def find_spec(self, name, path=None, target=None):
        if name in heavy and name not in found:
            chain, frame = [], sys._getframe(1)
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if module.startswith("services"):
                    chain.append(f"{{module}}:{{frame.f_lineno}}")
                frame = frame.f_back
            found[name] = chain[::-1]
        return None

sys.meta_path.insert(0, Witness())
for name in {modules!r}:
    __import__(name)
print(json.dumps(found))
"""


def heavy_imports(modules: list[str], heavy: list[str] = HEAVY, cwd: Path = ROOT) -> dict[str, list[str]]:
    """{library: the chain of `services` module:line that imported it} for each heavy library `modules` load."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(modules=modules, heavy=heavy)], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"importing {modules} failed:\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe(found: dict[str, list[str]]) -> str:
    return "\n".join(f"{library}: {' -> '.join(chain) or '(not from services)'}" for library, chain in found.items())


def test_servers_import_no_ml_library():
    found = heavy_imports(SERVER_MODULES)
    assert not found, "the servers import ML libraries (import chain, outermost first):\n" + describe(found)


def test_the_probe_names_the_import_chain(tmp_path):
    package = tmp_path / "services_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("import json\nfrom services_probe import middle\n")
    (package / "middle.py").write_text("def load():\n    import wave\n\n\nload()\n")
    found = heavy_imports(["services_probe.top"], heavy=["wave", "tomllib"], cwd=tmp_path)
    assert found == {"wave": ["services_probe.top:2", "services_probe.middle:5", "services_probe.middle:2"]}
