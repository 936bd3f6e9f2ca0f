"""What both service clients share: the channel (message limits, a retry policy, the API key) and its
lifecycle."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
API_KEY_ENV = "LMFORGE_API_KEY"


class _BearerKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call (what the servers' key check reads)."""

    def __init__(self, key: str):
        self.header = ("authorization", f"Bearer {key}")

    def _with_key(self, details):
        # grpc hands interceptors its _ClientCallDetails namedtuple
        return details._replace(metadata=[*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_key(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_key(details), request_iterator)


def retry_service_config(service: str, methods: Iterable[str]) -> str:
    """A gRPC service config retrying `methods` of `service` on UNAVAILABLE with exponential backoff."""
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": service, "method": m} for m in methods],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "3s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


class ServiceClient:
    """Channel set-up and lifecycle shared by the service clients (context manager, `close()`).

    A given `channel` is used as is and not closed by `close()`; otherwise an insecure channel to
    `address` is opened with our message limits and the service config's retry policy. `api_key` (default
    $LMFORGE_API_KEY) is sent with every call as `authorization: Bearer <key>`.
    """

    def __init__(self, address: str, channel: grpc.Channel | None, service_config: str,
                 api_key: str | None = None):
        self.address = address
        self._owns_channel = channel is None
        self._base_channel = channel or grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", service_config),
            ],
        )
        key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
        self._channel = grpc.intercept_channel(self._base_channel, _BearerKey(key)) if key else self._base_channel

    def close(self) -> None:
        if self._owns_channel:
            self._base_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"
