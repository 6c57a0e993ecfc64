"""One exception hierarchy for the whole server.

Every error carries a protocol-neutral :class:`Code`; each front end maps codes to its own
status once (gRPC status codes, HTTP status numbers), so the core never imports a protocol.
"""

from __future__ import annotations

import enum
import logging


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    INTERNAL = "INTERNAL"


class InferdError(Exception):
    """Base error; ``code`` decides the status each protocol answers with."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(InferdError):
    code = Code.INVALID_ARGUMENT


class NotFound(InferdError):
    code = Code.NOT_FOUND


class Unavailable(InferdError):
    """Model not ready, queue full, request timed out, server shutting down."""

    code = Code.UNAVAILABLE


class ResourceExhausted(InferdError):
    """Only for size limits (message or body too large)."""

    code = Code.RESOURCE_EXHAUSTED


class Unimplemented(InferdError):
    code = Code.UNIMPLEMENTED


class Cancelled(InferdError):
    code = Code.CANCELLED


class DeadlineExceeded(InferdError):
    """The client's own deadline passed while its request waited; a server-side queue
    timeout is ``Unavailable`` instead, as in Triton."""

    code = Code.DEADLINE_EXCEEDED


class Internal(InferdError):
    code = Code.INTERNAL


class ModelLoadError(InferdError):
    """A model could not be loaded; the message is shown as the model's reason."""

    code = Code.INVALID_ARGUMENT


# What a client is told of a server fault (any exception that is not an InferdError).
INTERNAL_ERROR = "internal error"
_faults = logging.getLogger("inferd.server.faults")


def internal_error(exc: BaseException, where: str) -> str:
    """Log ``exc``, a server fault, with its traceback, once, naming ``where`` it happened; the
    message its client gets, which never carries the exception's type, text or a server path."""
    _faults.error("%s: %s", where, INTERNAL_ERROR, exc_info=exc)
    return INTERNAL_ERROR
