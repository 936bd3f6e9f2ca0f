"""gRPC server bootstrap shared by both services: health, reflection, limits, API keys, Prometheus metrics,
the options the two servers share (`add_access_options`), and the error table.

`translate_errors` is the one place where exceptions become gRPC statuses (DESIGN.md §5.6):
an `LmforgeError` becomes its own code with a google.rpc.Status carrying a BadRequest (one field
violation per bad field/row) and our `ErrorDetail`; anything else is logged with its traceback and
becomes INTERNAL. Servicers decorate every method with it.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from lmforge.v1 import common_pb2
from services.common.auth import AuthInterceptor, KeyFile, default_keys_file
from services.common.errors import LmforgeError
from services.common.logging import get_logger
from services.common.metrics import MetricsEndpoint, RpcMetrics

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 64 << 20
# google.rpc.BadRequest descriptions carry the row number, since the field list is flat.
MAX_DETAIL_VIOLATIONS = 1000


def _status_for(exc: LmforgeError) -> status_pb2.Status:
    code = getattr(code_pb2, exc.code, code_pb2.INTERNAL)
    details = []
    if exc.violations:
        bad_request = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=(f"row {v.row}: {v.field}" if v.row else v.field),
                description=v.reason + (f" (hint: {v.hint})" if v.hint else ""))
            for v in exc.violations[:MAX_DETAIL_VIOLATIONS]])
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    detail = common_pb2.ErrorDetail(code=exc.code, message=exc.message, violations=[
        common_pb2.FieldViolation(row=v.row, field=v.field, reason=v.reason, hint=v.hint)
        for v in exc.violations[:MAX_DETAIL_VIOLATIONS]])
    packed = any_pb2.Any()
    packed.Pack(detail)
    details.append(packed)
    return status_pb2.Status(code=code, message=exc.message, details=details)


def abort_with(context: grpc.ServicerContext, exc: LmforgeError) -> None:
    context.abort_with_status(rpc_status.to_status(_status_for(exc)))


def translate_errors(method: Callable) -> Callable:
    """Decorator for servicer methods (unary or server-streaming) mapping exceptions to statuses."""

    def handle(exc: Exception, context: grpc.ServicerContext) -> None:
        if isinstance(exc, LmforgeError):
            log.info("request refused", rpc=method.__name__, code=exc.code, message=exc.message[:300])
            abort_with(context, exc)
        log.exception("unexpected error", rpc=method.__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {type(exc).__name__}: {exc}")

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream_wrapper(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001
                if isinstance(exc, grpc.RpcError) or context.code() is not None:
                    raise
                handle(exc, context)
        return stream_wrapper

    @functools.wraps(method)
    def unary_wrapper(self, request, context):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, grpc.RpcError) or context.code() is not None:
                raise
            handle(exc, context)
    return unary_wrapper


def add_access_options(parser: argparse.ArgumentParser) -> None:
    """The options both servers take about who may call them and what they expose: --keys, --insecure,
    --metrics-port (read back with `access_options`)."""
    parser.add_argument("--keys", type=Path, default=None,
                        help="API key file (default $LMFORGE_HOME/keys.json; lmforge-admin keys create makes keys)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening on a non-loopback address without API keys")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (0: any free port; default off)")


def access_options(args: argparse.Namespace) -> dict:
    """The servers' keyword arguments for what `add_access_options` parsed."""
    return {"keys_file": args.keys or default_keys_file(), "insecure": args.insecure,
            "metrics_port": args.metrics_port}


class ServerHandle:
    """A started server with its health servicer and its metrics endpoint (if any); `stop` drains in-flight
    calls within a grace period and stops the endpoint."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer, port: int,
                 service_names: list[str], metrics: MetricsEndpoint | None = None):
        self.server = server
        self.health = health_servicer
        self.port = port
        self.service_names = service_names
        self.metrics = metrics

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace_seconds: float = 5.0) -> None:
        self.set_serving(False)
        self.server.stop(grace_seconds).wait()
        if self.metrics is not None:
            self.metrics.stop()


def start_server(register: Callable[[grpc.Server], None], service_names: list[str], *, host: str = "127.0.0.1",
                 port: int = 0, max_workers: int = 64, registry: CollectorRegistry | None = None,
                 keys: KeyFile | None = None, metrics_port: int | None = None) -> ServerHandle:
    """Create, register and start a server (health NOT_SERVING until the caller calls set_serving).

    Every call is counted into `registry` (per-RPC metrics) and, with `keys`, needs an API key;
    `metrics_port` (not None) serves the registry to Prometheus on `host`."""
    registry = registry or CollectorRegistry()
    interceptors: list[grpc.ServerInterceptor] = [RpcMetrics(registry).interceptor()]
    if keys is not None:
        interceptors.append(AuthInterceptor(keys))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],
    )
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    metrics = MetricsEndpoint.start(registry, host, metrics_port) if metrics_port is not None else None
    handle = ServerHandle(server, health_servicer, bound, service_names, metrics)
    handle.set_serving(False)
    return handle


def wait_for_shutdown_signal() -> None:
    """Block until SIGTERM or SIGINT (call from the main thread of a server process)."""
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
