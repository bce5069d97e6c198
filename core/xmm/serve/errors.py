"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for anything a client
can cause, and no traceback in any answer."""

from __future__ import annotations

from typing import Any

from xmm.errors import (
    ContextLengthError,
    MediaError,
    MediaTooLargeError,
    PromptError,
    RegistryError,
    XmmError,
)


class APIError(Exception):
    """An error answer: HTTP ``status`` plus OpenAI's ``type``, ``param`` and ``code``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_xmm_error(e: XmmError, *, param: str | None = None) -> APIError:
    """The answer for an xmm error raised while reading a request: every one of them is the client's input."""
    from xmm.textguard import ControlTokenError

    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), param=param or "messages", code="context_length_exceeded")
    if isinstance(e, MediaTooLargeError):
        return APIError(413, str(e), param=param, code="media_too_large")
    if isinstance(e, MediaError):
        return APIError(400, str(e), param=param, code="invalid_media")
    if isinstance(e, ControlTokenError):
        return APIError(400, str(e), param=param or "messages", code="control_tokens_refused")
    if isinstance(e, (PromptError, RegistryError)):
        return APIError(400, str(e), param=param or "messages", code="invalid_messages")
    return APIError(400, str(e), param=param, code="invalid_request")


def internal_error() -> APIError:
    """A failure that is the server's, not the request's: said without details (they go to the server log)."""
    return APIError(500, "the server failed to answer this request; see the server log", type="server_error",
                    code="internal_error")
