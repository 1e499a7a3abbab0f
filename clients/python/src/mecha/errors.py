"""Exceptions: one class per SPEC §5 status code, plus connection and protocol failures.

A status error keeps the numeric ``status`` and the daemon's ``message`` (meant for
humans and logs, never to be parsed, SPEC §5). Expected outcomes that SPEC makes OK
answers — a lock not acquired, an unlock of a free lock, a delete of a missing key —
are return values, not exceptions; a ``get`` of a missing key returns ``None``.
"""

from __future__ import annotations

import os


class MechaError(Exception):
    """Base of every error this package raises."""


class MechaConnectionError(MechaError, ConnectionError):
    """No connection to mechad: the daemon is absent, or the connection was lost.

    After a loss, requests that were in flight have unknown outcomes (SPEC §6.9);
    the client reconnects on the next call."""


class ProtocolError(MechaError):
    """mechad sent something this client cannot understand: a bug on one side."""


class StatusError(MechaError):
    """mechad answered a request with a non-OK status (SPEC §5)."""

    status: int = 10
    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None, opcode: int = 0) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.opcode = opcode

    def __str__(self) -> str:
        return f"{STATUS_NAMES.get(self.status, f'STATUS {self.status}')}: {self.message}"


class NotFound(StatusError):
    status = 1


class EtagMismatch(StatusError):
    status = 2


class InvalidArgument(StatusError):
    status = 3


class UnknownOpcode(StatusError):
    status = 4


class UnsupportedVersion(StatusError):
    status = 5


class PermissionDenied(StatusError):
    status = 6


class ResourceExhausted(StatusError):
    status = 7


class Unavailable(StatusError):
    """The only retryable status: the serving module crashed, restarts or backs off."""
    status = 8
    retryable = True


class DeadlineExceeded(StatusError, TimeoutError):
    """The call's deadline passed, at the daemon or (no answer at all) in the client."""
    status = 9


class Internal(StatusError):
    """A bug or unexpected failure in mecha; also any status this client does not know."""
    status = 10


class Unsupported(StatusError):
    """The component's driver does not implement this operation or option."""
    status = 11


_BY_STATUS: dict[int, type[StatusError]] = {
    c.status: c for c in (NotFound, EtagMismatch, InvalidArgument, UnknownOpcode,
                          UnsupportedVersion, PermissionDenied, ResourceExhausted,
                          Unavailable, DeadlineExceeded, Internal, Unsupported)
}
STATUS_NAMES = {
    1: "NOT_FOUND", 2: "ETAG_MISMATCH", 3: "INVALID_ARGUMENT", 4: "UNKNOWN_OPCODE",
    5: "UNSUPPORTED_VERSION", 6: "PERMISSION_DENIED", 7: "RESOURCE_EXHAUSTED",
    8: "UNAVAILABLE", 9: "DEADLINE_EXCEEDED", 10: "INTERNAL",
    11: "UNSUPPORTED",
}


def error_for(status: int, message: str, opcode: int = 0) -> StatusError:
    """The exception for a status; an unknown code becomes ``Internal`` (SPEC §5) but
    keeps its number in ``.status``."""
    return _BY_STATUS.get(status, Internal)(message, status=status, opcode=opcode)


def daemon_absent(path: str | os.PathLike[str]) -> MechaConnectionError:
    return MechaConnectionError(f"is mechad running? socket: {os.fspath(path)}")
