"""API keys and roles for both servers: `authorization: Bearer <key>` gRPC metadata, checked by a server
interceptor against a key file that holds only hashes.

    lmforge-admin keys create --tenant acme --role member     # prints the key once: lmf_<id>_<secret>
    lmforge-admin keys list | lmforge-admin keys revoke ID

A key is `lmf_<id>_<secret>`: `id` (public, 8 hex digits) finds the record, the 32-byte random secret is
stored as its SHA-256 (a high-entropy token needs no slow hash; GitHub and Stripe tokens work the same
way) and compared in constant time. The file (`$LMFORGE_HOME/keys.json` unless `--keys`) is re-read when
it changes, so a revoke or a new key takes effect on the next call, with no restart.

Roles: `admin` may call everything; `member` everything but the admin-only calls (none yet: the list is
where they go); `viewer` only reads and generates (`READ_ONLY_METHODS`). Health and reflection stay open.
While the file holds no key, a server bound to loopback lets every call through (the demo and the tests
stay simple); once a key exists, every call needs one. A server bound elsewhere refuses to start without
keys unless told `--insecure` (`open_key_file`).

Not here yet: tenants owning their jobs, datasets and checkpoints (a key's tenant is recorded and
checked for format only), TLS.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

ROLES = ("admin", "member", "viewer")
KEY_PREFIX = "lmf_"
_KEY = re.compile(r"^lmf_([0-9a-f]{8})_([A-Za-z0-9_-]{20,})$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Calls anyone may make with no key at all.
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
# What a viewer may call: reading and generating, never creating, changing or loading anything.
READ_ONLY_METHODS = frozenset({
    "lmforge.v1.TrainerService/GetJob", "lmforge.v1.TrainerService/ListJobs",
    "lmforge.v1.TrainerService/StreamMetrics", "lmforge.v1.TrainerService/ListCheckpoints",
    "lmforge.v1.TrainerService/ListDatasets", "lmforge.v1.TrainerService/ValidateDataset",
    "lmforge.v1.TrainerService/DescribeDataset",
    "lmforge.v1.InferenceService/Generate", "lmforge.v1.InferenceService/Tokenize",
    "lmforge.v1.InferenceService/ListModels",
})
# Calls only an admin may make (server-wide operations); empty today.
ADMIN_METHODS: frozenset[str] = frozenset()


class InsecureBind(Exception):
    """A server asked to listen on a non-loopback address with no API keys and no --insecure."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class KeyAdminError(ValueError):
    """A bad admin request (unknown role, bad tenant, unknown key id)."""


@dataclass
class KeyRecord:
    id: str
    sha256: str
    tenant: str
    role: str
    created_at: float
    expires_at: float = 0.0  # 0: never
    revoked_at: float = 0.0  # 0: not revoked

    def state(self, now: float) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and now >= self.expires_at:
            return "expired"
        return "active"


def default_keys_file() -> Path:
    return Path(os.environ.get("LMFORGE_HOME", ".lmforge")) / "keys.json"


class KeyFile:
    """The key records of one file; re-read when the file changes. Writes are atomic (tmp + rename)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._records: dict[str, KeyRecord] = {}

    def records(self) -> dict[str, KeyRecord]:
        with self._lock:
            try:
                stat = self.path.stat()
                seen = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                seen = None
            if seen != self._seen:
                self._records = self._read() if seen else {}
                self._seen = seen
            return dict(self._records)

    def _read(self) -> dict[str, KeyRecord]:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return {r["id"]: KeyRecord(**r) for r in data.get("keys", [])}

    def _write(self, records: dict[str, KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({"keys": [asdict(r) for r in records.values()]}, indent=2), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def create(self, tenant: str, role: str, expires_in_days: float = 0.0) -> tuple[str, KeyRecord]:
        """A new key: returns (the key, shown once, never stored; its record)."""
        if role not in ROLES:
            raise KeyAdminError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        if not _TENANT.match(tenant):
            raise KeyAdminError(f"tenant: {tenant!r} must be lower-case letters, digits and '-' (at most 63)")
        if expires_in_days < 0:
            raise KeyAdminError("expires-in-days: must be >= 0 (0: never)")
        records = self.records()
        key_id = secrets.token_hex(4)
        while key_id in records:
            key_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        record = KeyRecord(key_id, _digest(secret), tenant, role, now,
                           now + expires_in_days * 86400 if expires_in_days else 0.0)
        records[key_id] = record
        self._write(records)
        return f"{KEY_PREFIX}{key_id}_{secret}", record

    def revoke(self, key_id: str) -> KeyRecord:
        records = self.records()
        if key_id not in records:
            raise KeyAdminError(f"no key {key_id!r} (lmforge-admin keys list shows them)")
        records[key_id].revoked_at = records[key_id].revoked_at or time.time()
        self._write(records)
        return records[key_id]

    def check(self, key: str) -> tuple[KeyRecord | None, str]:
        """The active record of a presented key, or (None, why not)."""
        match = _KEY.match(key)
        if not match:
            return None, "the key is malformed (expected lmf_<id>_<secret>)"
        record = self.records().get(match.group(1))
        if record is None or not hmac.compare_digest(record.sha256, _digest(match.group(2))):
            return None, "unknown key"
        state = record.state(time.time())
        if state != "active":
            return None, f"the key is {state}"
        return record, ""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_key_file(host: str, keys_file: Path | None, insecure: bool) -> KeyFile | None:
    """The key file a server bound to `host` checks calls against (None: no file, every call passes).
    Raises InsecureBind when a non-loopback address has no keys and `insecure` is false."""
    keys = KeyFile(keys_file) if keys_file is not None else None
    if is_loopback(host) or insecure or (keys is not None and keys.records()):
        return keys
    raise InsecureBind(f"refusing to listen on {host} without API keys: anyone who reaches the port could do "
                       "anything. Create a key (lmforge-admin keys create --tenant T --role admin) or pass "
                       "--insecure")


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks `authorization: Bearer <key>` and the key's role for every call but health and reflection."""

    def __init__(self, keys: KeyFile):
        self.keys = keys

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method.lstrip("/")
        if method.startswith(OPEN_SERVICES):
            return continuation(handler_call_details)
        if not self.keys.records():
            return continuation(handler_call_details)  # no key exists: a loopback server stays open
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        if not header.startswith("Bearer "):
            return _deny(continuation, handler_call_details, grpc.StatusCode.UNAUTHENTICATED,
                         "this server needs an API key: send `authorization: Bearer <key>` metadata "
                         "(the CLI and the clients read LMFORGE_API_KEY)")
        record, why = self.keys.check(header[len("Bearer "):].strip())
        if record is None:
            return _deny(continuation, handler_call_details, grpc.StatusCode.UNAUTHENTICATED,
                         f"API key refused: {why}")
        if record.role == "viewer" and method not in READ_ONLY_METHODS or \
                record.role != "admin" and method in ADMIN_METHODS:
            return _deny(continuation, handler_call_details, grpc.StatusCode.PERMISSION_DENIED,
                         f"key {record.id} has the role {record.role!r}, which may not call {method}")
        return continuation(handler_call_details)


def _deny(continuation, handler_call_details, code: grpc.StatusCode, message: str):
    """A handler of the call's own kind that fails it with `code` (the RPC's real handler never runs)."""
    handler = continuation(handler_call_details)

    def abort(request, context):
        context.abort(code, message)

    if handler is None:
        return None
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(abort, handler.request_deserializer, handler.response_serializer)
