"""What both service clients share: the channel (message limits, a retry policy) and its lifecycle."""

from __future__ import annotations

import json
from collections.abc import Iterable

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
    `address` is opened with our message limits and the service config's retry policy.
    """

    def __init__(self, address: str, channel: grpc.Channel | None, service_config: str):
        self.address = address
        self._owns_channel = channel is None
        self._channel = channel or grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", service_config),
            ],
        )

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"
