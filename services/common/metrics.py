"""Prometheus metrics both servers share: per-RPC counts and latency (a gRPC server interceptor) and the
HTTP endpoint Prometheus scrapes (`--metrics-port`).

Each server owns its `CollectorRegistry`, so several servers in one process (the tests) never collide.
Service-specific metrics register on the same registry (services/trainer/metrics.py,
services/inference/metrics.py).

    registry = CollectorRegistry()
    rpc = RpcMetrics(registry)
    handle = start_server(register, names, interceptors=[rpc.interceptor()])
    endpoint = MetricsEndpoint.start(registry, host, port)    # GET http://HOST:PORT/metrics
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# Unary calls take milliseconds; streams (Generate, StreamMetrics) take seconds to hours.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class RpcMetrics:
    """`lmforge_rpc_requests_total{service,method,code}` and `lmforge_rpc_duration_seconds{service,method}`:
    the time from the call's arrival to its last response (a stream's whole life)."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("lmforge_rpc_requests", "gRPC calls by method and status code",
                                ["service", "method", "code"], registry=registry)
        self.duration = Histogram("lmforge_rpc_duration_seconds", "gRPC call duration (a stream: its whole life)",
                                  ["service", "method"], buckets=RPC_BUCKETS, registry=registry)

    def interceptor(self) -> grpc.ServerInterceptor:
        return _RpcMetricsInterceptor(self)

    def observe(self, full_method: str, started: float, context: grpc.ServicerContext, failed: bool) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        code = context.code() if hasattr(context, "code") else None
        if code is None and failed and not context.is_active():
            code = grpc.StatusCode.CANCELLED  # the client went away mid-stream
        elif code is None:
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        self.requests.labels(service, method, code.name).inc()
        self.duration.labels(service, method).observe(time.perf_counter() - started)


class _RpcMetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        name = handler_call_details.method
        observe = self.metrics.observe
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, name, observe), handler.request_deserializer,
                handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, name, observe), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _timed_unary(handler.stream_unary, name, observe), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _timed_stream(handler.stream_stream, name, observe), handler.request_deserializer,
            handler.response_serializer)


def _timed_unary(behavior: Callable, name: str, observe: Callable) -> Callable:
    def call(request, context):
        started = time.perf_counter()
        failed = True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            observe(name, started, context, failed)
    return call


def _timed_stream(behavior: Callable, name: str, observe: Callable) -> Callable:
    def call(request, context) -> Iterator:
        started = time.perf_counter()
        failed = True
        try:
            yield from behavior(request, context)
            failed = False
        finally:
            observe(name, started, context, failed)
    return call


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@dataclass
class MetricsEndpoint:
    """The HTTP server Prometheus scrapes: prometheus_client's WSGI app on the server's registry.

    It always answers in the classic text format (0.0.4). prometheus_client 0.26 writes OpenMetrics sample
    names with ':' turned into '_' (`vllm:generation_tokens_total` arrives as `vllm_generation_tokens_total`),
    which would break the vLLM names dashboards expect; the text format keeps them."""

    server: object
    port: int

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
        app = make_wsgi_app(registry)

        def classic_text(environ, start_response):
            return app({**environ, "HTTP_ACCEPT": "text/plain; version=0.0.4"}, start_response)

        server = make_server(host, port, classic_text, ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return cls(server, server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
