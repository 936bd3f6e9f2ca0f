"""`lmforge-inference`: run the inference gRPC service.

    lmforge-inference --port 50052                       # store in $LMFORGE_HOME/store (default .lmforge)
    lmforge-inference --port 0 --preload smollm2-135m-instruct:nf4
    lmforge-inference --metrics-port 9401                # Prometheus metrics on http://127.0.0.1:9401/metrics

Prints `lmforge-inference listening on HOST:PORT` once it serves. Health is NOT_SERVING while
preloading and while draining. SIGTERM/SIGINT: refuse new calls, let streams in flight finish within
--grace seconds, unload models, exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from lmforge.v1 import inference_pb2, inference_pb2_grpc
from services.common.grpc_server import (
    ServerHandle,
    access_options,
    add_access_options,
    start_server,
    wait_for_shutdown_signal,
)
from services.common.auth import InsecureBind, open_key_file
from services.common.logging import configure_logging, get_logger
from services.common.store import CheckpointStore
from services.engine.backends.base import LoadOptions, QuantizationConfig
from services.inference.metrics import InferenceMetrics
from services.inference.registry import ModelRegistry
from services.inference.servicer import InferenceServicer

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
log = get_logger(__name__)


class InferenceServer:
    """The assembled service; tests build one in-process on port 0."""

    def __init__(self, store_root: Path, *, host: str = "127.0.0.1", port: int = 0, max_batch_size: int = 8,
                 max_requests_per_model: int = 64, auto_load: bool = True, registry: ModelRegistry | None = None,
                 metrics_port: int | None = None, keys_file: Path | None = None, insecure: bool = False):
        keys = open_key_file(host, keys_file, insecure)
        self.registry = registry or ModelRegistry(
            CheckpointStore(store_root), max_requests_per_model=max_requests_per_model, auto_load=auto_load,
            default_options=LoadOptions(max_batch_size=max_batch_size))
        self.prometheus = CollectorRegistry()
        servicer = InferenceServicer(self.registry, InferenceMetrics(self.prometheus, self.registry))
        self.handle: ServerHandle = start_server(
            lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
            [SERVICE_NAME], host=host, port=port, registry=self.prometheus, keys=keys, metrics_port=metrics_port)
        self.metrics = self.handle.metrics
        self.address = f"{host}:{self.handle.port}"

    def preload(self, spec: str) -> None:
        """`MODEL_ID[:QUANTIZATION[:BACKEND]]`, e.g. smollm2-135m-instruct:nf4."""
        model_id, _, rest = spec.partition(":")
        quantization, _, backend = rest.partition(":")
        options = LoadOptions(quantization=QuantizationConfig(type=quantization or "none"),
                              max_batch_size=self.registry.default_options.max_batch_size)
        self.registry.load(model_id, backend or "transformers", options)

    def serve(self) -> None:
        self.handle.set_serving(True)
        log.info("inference serving", address=self.address)

    def stop(self, grace_seconds: float = 10.0) -> None:
        self.handle.stop(grace_seconds)
        self.registry.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmforge-inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LMFORGE_INFERENCE_PORT", "50052")))
    parser.add_argument("--store", type=Path, default=None, help="checkpoint store (default $LMFORGE_HOME/store)")
    parser.add_argument("--preload", action="append", default=[], metavar="MODEL[:QUANT[:BACKEND]]")
    parser.add_argument("--max-batch-size", type=int, default=8, help="sequences decoded together per model")
    parser.add_argument("--max-requests", type=int, default=64,
                        help="concurrent sequences per model; more are refused with RESOURCE_EXHAUSTED")
    parser.add_argument("--no-auto-load", action="store_true", help="require LoadModel before Generate")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to drain streams on shutdown")
    add_access_options(parser)
    args = parser.parse_args(argv)
    configure_logging()
    store = args.store or Path(os.environ.get("LMFORGE_STORE",
                                              Path(os.environ.get("LMFORGE_HOME", ".lmforge")) / "store"))
    try:
        server = InferenceServer(store, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                                 max_requests_per_model=args.max_requests, auto_load=not args.no_auto_load,
                                 **access_options(args))
    except InsecureBind as exc:
        print(f"lmforge-inference: {exc.message}", file=sys.stderr)
        return 1
    for spec in args.preload:
        server.preload(spec)
    server.serve()
    print(f"lmforge-inference listening on {server.address}", flush=True)
    if server.metrics is not None:
        print(f"lmforge-inference metrics on http://{args.host}:{server.metrics.port}/metrics", flush=True)
    wait_for_shutdown_signal()
    log.info("shutting down")
    server.stop(args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
