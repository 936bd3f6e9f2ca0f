"""Domain errors and the one table that maps them to gRPC status codes (DESIGN.md §5.6).

Code below the servicers raises these; `services.common.grpc_server` turns them into statuses with a
google.rpc.BadRequest detail listing every field violation. Anything else becomes INTERNAL and is logged
with its traceback. Nothing in this module imports grpc, so workers and recipes may raise these too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePath


@dataclass(frozen=True)
class Violation:
    """One problem with one field of one row (row 0: the request itself, not a data row)."""

    row: int
    field: str
    reason: str
    hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f"row {self.row}, " if self.row else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.field}: {self.reason}{hint}"


@dataclass
class LmforgeError(Exception):
    """Base of the errors a user can act on. `code` is the gRPC status code name."""

    message: str
    violations: list[Violation] = field(default_factory=list)
    code: str = "INTERNAL"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class InvalidArgument(LmforgeError):
    def __init__(self, message: str, violations: list[Violation] | None = None):
        super().__init__(message, list(violations or []), "INVALID_ARGUMENT")


class NotFound(LmforgeError):
    def __init__(self, message: str):
        super().__init__(message, [], "NOT_FOUND")


class AlreadyExists(LmforgeError):
    def __init__(self, message: str):
        super().__init__(message, [], "ALREADY_EXISTS")


class FailedPrecondition(LmforgeError):
    def __init__(self, message: str, violations: list[Violation] | None = None):
        super().__init__(message, list(violations or []), "FAILED_PRECONDITION")


class ResourceExhausted(LmforgeError):
    def __init__(self, message: str):
        super().__init__(message, [], "RESOURCE_EXHAUSTED")


class Unimplemented(LmforgeError):
    def __init__(self, message: str):
        super().__init__(message, [], "UNIMPLEMENTED")


class DataLoss(LmforgeError):
    def __init__(self, message: str):
        super().__init__(message, [], "DATA_LOSS")


def invalid_field(field_name: str, reason: str, hint: str = "") -> InvalidArgument:
    """An InvalidArgument about one request field, e.g. invalid_field("hyperparameters.batch_size", ...)."""
    return InvalidArgument(f"{field_name}: {reason}", [Violation(0, field_name, reason, hint)])


def without_path(text: str, path, name: str) -> str:
    """A library's message with a server path (a file or a folder) replaced by `name`: what a user may see.
    Libraries (pyarrow, transformers) repeat the path they were given; a user must never see it."""
    return text.replace(str(PurePath(path)), name)
