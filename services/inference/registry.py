"""Which models are loaded, on which backend, with which adapters; admission control for requests.

Models and adapters are named by checkpoint-store ids only. A model is loaded once (per process) with
one backend and quantization; adapters are attached to their base on first use. Each loaded model
admits a bounded number of concurrent requests: past the bound a request is refused at once with
RESOURCE_EXHAUSTED rather than queued without limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.common.logging import get_logger
from services.common.store import CheckpointStore, EntryKind
from services.engine.backends import BACKENDS, BackendFactory, load_backend
from services.engine.backends.base import Backend, LoadOptions

log = get_logger(__name__)


@dataclass
class LoadedModel:
    model_id: str
    backend_kind: str
    options: LoadOptions
    backend: Backend
    load_seconds: float
    active_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelRegistry:
    def __init__(self, store: CheckpointStore, *, backend_factory: BackendFactory = load_backend,
                 max_requests_per_model: int = 64, auto_load: bool = True,
                 default_options: LoadOptions | None = None):
        self.store = store
        self.backend_factory = backend_factory
        self.max_requests_per_model = max_requests_per_model
        self.auto_load = auto_load
        self.default_options = default_options or LoadOptions()
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        self._tokenizers: dict[str, object] = {}

    # ---- models -----------------------------------------------------------------------------------

    def _check_servable(self, model_id: str, field_name: str = "model_id"):
        manifest = self.store.get(model_id, field_name)
        if manifest.kind is EntryKind.ADAPTER:
            raise FailedPrecondition(
                f"{field_name}: {model_id!r} is a LoRA adapter; load its base model {manifest.base_model_id!r} "
                f"and pass the adapter as adapter_id")
        if manifest.kind is EntryKind.REWARD_MODEL:
            raise FailedPrecondition(
                f"{field_name}: {model_id!r} is a reward model: it scores responses and does not generate text; "
                "name it as the reward model of an RL training job instead")
        return manifest

    def load(self, model_id: str, backend_kind: str = "transformers", options: LoadOptions | None = None) -> LoadedModel:
        """Load a model (idempotent for the same settings). Raises FAILED_PRECONDITION if it is loaded
        with other settings: unload it first."""
        options = options or self.default_options
        if backend_kind not in BACKENDS:
            raise InvalidArgument(f"backend: unknown backend {backend_kind!r}; use one of {', '.join(BACKENDS)}")
        self._check_servable(model_id)
        with self._lock:
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                loaded = self._models.get(model_id)
            if loaded:
                if loaded.backend_kind != backend_kind or loaded.options.quantization != options.quantization \
                        or loaded.options.dtype != options.dtype:
                    raise FailedPrecondition(
                        f"model_id: {model_id!r} is already loaded with backend {loaded.backend_kind}, quantization "
                        f"{loaded.options.quantization.type}, dtype {loaded.options.dtype}; unload it first")
                return loaded
            started = time.monotonic()
            backend = self.backend_factory(backend_kind, self.store.path_of(model_id), options)
            loaded = LoadedModel(model_id, backend_kind, options, backend, time.monotonic() - started)
            with self._lock:
                self._models[model_id] = loaded
            log.info("model loaded", model_id=model_id, backend=backend_kind, quantization=options.quantization.type,
                     seconds=round(loaded.load_seconds, 1), memory_mib=round(backend.memory_bytes() / 2**20, 1))
            return loaded

    def unload(self, model_id: str) -> None:
        with self._lock:
            loaded = self._models.pop(model_id, None)
        if loaded is None:
            raise NotFound(f"model_id: {model_id!r} is not loaded")
        loaded.backend.close()
        log.info("model unloaded", model_id=model_id)

    def get(self, model_id: str) -> LoadedModel:
        """A loaded model; with auto-load, loads it with the default settings on first use."""
        with self._lock:
            loaded = self._models.get(model_id)
        if loaded:
            return loaded
        self._check_servable(model_id)
        if not self.auto_load:
            raise FailedPrecondition(f"model_id: {model_id!r} is not loaded; call LoadModel first")
        return self.load(model_id, "transformers", self.default_options)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def close(self) -> None:
        for model_id in [m.model_id for m in self.loaded()]:
            self.unload(model_id)

    # ---- adapters ---------------------------------------------------------------------------------

    def ensure_adapter(self, model_id: str, adapter_id: str) -> None:
        """Attach an adapter from the store to a loaded model (no-op when it is already attached)."""
        loaded = self.get(model_id)
        with loaded.lock:
            if adapter_id in loaded.backend.adapter_ids():
                return
            manifest = self.store.get(adapter_id, "adapter_id")
            if manifest.kind is not EntryKind.ADAPTER:
                raise FailedPrecondition(f"adapter_id: {adapter_id!r} is a {manifest.kind.value}, not an adapter; "
                                         "serve it as model_id instead")
            if manifest.base_model_id != model_id:
                raise FailedPrecondition(f"adapter_id: {adapter_id!r} was trained on {manifest.base_model_id!r}, "
                                         f"not on {model_id!r}; use it with model_id={manifest.base_model_id!r}")
            loaded.backend.load_adapter(adapter_id, self.store.path_of(adapter_id))
            log.info("adapter loaded", model_id=model_id, adapter_id=adapter_id)

    def unload_adapter(self, model_id: str, adapter_id: str) -> None:
        loaded = self.get(model_id)
        with loaded.lock:
            if adapter_id not in loaded.backend.adapter_ids():
                raise NotFound(f"adapter_id: {adapter_id!r} is not loaded on {model_id!r}")
            loaded.backend.unload_adapter(adapter_id)

    # ---- requests ---------------------------------------------------------------------------------

    @contextmanager
    def admit(self, loaded: LoadedModel, count: int = 1) -> Iterator[None]:
        """Reserve `count` request slots on a model, or fail at once with RESOURCE_EXHAUSTED."""
        with loaded.lock:
            if loaded.active_requests + count > self.max_requests_per_model:
                raise ResourceExhausted(
                    f"{loaded.model_id} is serving {loaded.active_requests} sequences, its limit is "
                    f"{self.max_requests_per_model}; retry with backoff")
            loaded.active_requests += count
        try:
            yield
        finally:
            with loaded.lock:
                loaded.active_requests -= count

    def tokenizer(self, model_id: str):
        """The model's tokenizer, from the loaded backend or loaded alone (no weights) and cached."""
        with self._lock:
            loaded = self._models.get(model_id)
            if loaded:
                return loaded.backend.tokenizer
            cached = self._tokenizers.get(model_id)
        if cached is not None:
            return cached
        self._check_servable(model_id)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.store.path_of(model_id))
        with self._lock:
            self._tokenizers[model_id] = tokenizer
        return tokenizer
