"""Backends: each turns token ids into token ids, step by step (base.Backend); text is the engine's job.

    from services.engine.backends import load_backend
    backend = load_backend("transformers", store.path_of("tiny"), LoadOptions(max_batch_size=8))

Importing this package loads no torch: each backend module is imported only when it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.engine.backends.base import Backend, LoadOptions

BackendFactory = Callable[[str, Path, LoadOptions], Backend]
BACKENDS = ("transformers", "vllm")


def load_backend(kind: str, model_dir: Path, options: LoadOptions | None = None) -> Backend:
    """Load the model in `model_dir` on backend `kind` ("transformers" or "vllm").

    Raises InvalidArgument (unknown backend, bad options), FailedPrecondition (vLLM not installed, the model
    or quantization cannot be loaded)."""
    options = options or LoadOptions()
    if kind == "transformers":
        from services.engine.backends.transformers_backend import TransformersBackend

        return TransformersBackend(model_dir, options)
    if kind == "vllm":
        try:
            from services.engine.backends.vllm_backend import VllmBackend
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise FailedPrecondition(f"backend: vLLM is not available on this server ({exc}); "
                                     "use the transformers backend") from exc
        return VllmBackend(model_dir, options)
    raise InvalidArgument(f"backend: unknown backend {kind!r}; use one of {', '.join(BACKENDS)}")
