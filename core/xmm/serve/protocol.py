"""The OpenAI chat-completions wire format: the request fields the server reads, and the answers it writes.

Unknown request fields are ignored (clients send many optional ones); fields that would change the answer in a way
this server cannot honour (``n`` > 1, tools) are refused with 400.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xmm.serve.errors import APIError, bad_request


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` body (the fields read; others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    tools: list[Any] | None = None
    tool_choice: Any = None

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def parse_request(data: Any) -> ChatRequest:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}", code="invalid_body")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or None
        message = f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))
        raise bad_request(message, param=loc, code="invalid_value") from None
    if req.n != 1:
        raise bad_request("only n=1 is supported", param="n", code="unsupported_value")
    if req.tools:
        raise bad_request("tools are not supported by this model", param="tools", code="unsupported_value")
    return req


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
               outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` object; decoder outputs go in ``message.xmm_outputs`` (content-part shaped)."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if outputs:
        message["xmm_outputs"] = outputs
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
          usage_: dict[str, int] | None = None, *, choices: bool = True) -> dict[str, Any]:
    """A ``chat.completion.chunk`` (one server-sent event); the usage-only chunk has no choices."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
                           if choices else []}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def model_list(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "xmm"}]}


def unauthorized(message: str) -> APIError:
    return APIError(401, message, param=None, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
