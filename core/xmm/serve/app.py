"""The FastAPI application: OpenAI-compatible ``/v1/models`` and ``/v1/chat/completions`` (plain and streamed), and
the web chat when asked for.

Every answer to a bad request is OpenAI's error JSON with a 4xx status; an unexpected failure is a 500 with the same
shape and no details (the traceback goes to the server log only).
"""

# no `from __future__ import annotations`: FastAPI reads the route functions' annotations (Request) at run time
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from xmm.errors import MediaError, MissingDependencyError, XmmError
from xmm.limits import check_json_depth
from xmm.serve import protocol
from xmm.serve.batching import Batcher, Job, Result, Sampling
from xmm.serve.config import ServeConfig
from xmm.serve.content import ContentReader, Prompt
from xmm.serve.errors import APIError, bad_request, from_xmm_error, internal_error
from xmm.serve.memory import bound_primitive_cache

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_STOP_CHARS = 256


def create_app(model: Any, config: ServeConfig | None = None, *, name: str | None = None) -> Any:
    """The ASGI app serving ``model`` (a :class:`~xmm.model.MultimodalLM`); ``name`` is the model id clients see."""
    try:
        import fastapi
    except ImportError as e:
        raise MissingDependencyError("fastapi", extra="serve", purpose="xmm serve") from e
    from fastapi import Request
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    config = config or ServeConfig()
    bound_primitive_cache()  # before the first request runs the model: RSS must not grow with each new batch shape
    model_name = config.model_name or name or "xmm"
    created = int(time.time())
    tokenizer_lock = threading.Lock()
    reader = ContentReader(model, config)
    batcher = Batcher(model, max_batch_size=config.max_batch_size, batch_wait_s=config.batch_wait_ms / 1000,
                      max_queue=config.max_queue, tokenizer_lock=tokenizer_lock)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    # no /docs: Swagger's page loads its scripts from a CDN, and this server must work offline
    app = fastapi.FastAPI(title="xmm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.model_name = model_name

    def error_response(e: APIError) -> Any:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> Any:
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Any:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_response(internal_error())

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if config.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if not header:
                return error_response(protocol.unauthorized("no API key given: send 'Authorization: Bearer KEY'"))
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
                return error_response(protocol.unauthorized("the API key is not valid"))
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "batches": batcher.batches, "rows": batcher.rows,
                "memory_releases": batcher.releases}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return protocol.model_list(model_name, created)

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise APIError(404, f"the model '{model_id}' does not exist; this server has '{model_name}'",
                           param="model", code="model_not_found")
        return protocol.model_list(model_name, created)["data"][0]

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        data = await _read_json(request, config.max_body_bytes)
        req = protocol.parse_request(data)
        max_tokens = req.max_completion_tokens or req.max_tokens or config.default_max_tokens
        if max_tokens > config.max_tokens_limit:
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise bad_request(f"{field}={max_tokens} is over this server's limit of {config.max_tokens_limit}",
                              param=field, code="max_tokens_too_large")
        stop = _stop_list(req.stop, config.max_stop)
        prompt = await run_in_threadpool(reader.read, req.messages)
        positions = await run_in_threadpool(_check_prompt, model, prompt, max_tokens, tokenizer_lock)
        temperature = config.default_temperature if req.temperature is None else req.temperature
        sampling = Sampling(do_sample=temperature > 0, temperature=temperature or 1.0, top_p=req.top_p or 1.0,
                            top_k=req.top_k, seed=req.seed)
        import asyncio

        job = Job(prompt, max_tokens=max_tokens, sampling=sampling, stop=stop, positions=positions,
                  loop=asyncio.get_running_loop())
        batcher.submit(job)
        cid = protocol.completion_id()
        if req.stream:
            return StreamingResponse(_events(job, cid, model_name, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            result = await _wait(job)
        finally:
            job.cancel()  # a client that hung up frees its row
        return protocol.completion(cid, model_name, result.text, result.finish_reason, result.prompt_tokens,
                                   result.completion_tokens, result.outputs)

    if config.ui:
        @app.get("/", include_in_schema=False)
        async def index() -> Any:
            return FileResponse(STATIC / "index.html", media_type="text/html")

        @app.get("/ui/info")
        async def ui_info() -> dict[str, Any]:
            return {"model": model_name, "needs_key": bool(config.api_key),
                    "modalities": {m: {"extensions": list(s.file_extensions), "description": s.description}
                                   for m, s in model.specs.items()}}

    return app


# Over-limit bytes read and thrown away before a 413: a server that answers and closes while the client is still
# sending makes the client's socket see a reset instead of the answer. Past this, the connection is cut off.
DISCARD_BYTES = 16 << 20


async def _read_json(request: Any, limit: int) -> Any:
    """The body as JSON, refusing more than ``limit`` bytes (from Content-Length, or while reading) and deep nesting;
    a refused body is read on (not kept) up to ``DISCARD_BYTES`` more, so that the client receives the 413."""
    too_big = APIError(413, f"the request body is over the limit of {limit:,} bytes", param=None,
                       code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise bad_request("the Content-Length header is not a number", code="invalid_body")
    if length is not None and int(length) > limit + DISCARD_BYTES:
        raise too_big
    body = bytearray()
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit + DISCARD_BYTES:
            break
        if seen <= limit:
            body += chunk
    if seen > limit or (length is not None and int(length) > limit):
        raise too_big
    if not body:
        raise bad_request("the request has no body; send the chat completion request as JSON", code="invalid_json")
    try:
        check_json_depth(bytes(body), what="the request body")
        return json.loads(body)
    except MediaError as e:
        raise bad_request(str(e).split(": ", 1)[-1], code="invalid_json") from None
    except (ValueError, RecursionError) as e:
        raise bad_request(f"the body is not valid JSON: {e}", code="invalid_json") from None


def _stop_list(stop: str | list[str] | None, most: int) -> list[str]:
    items = [stop] if isinstance(stop, str) else list(stop or [])
    if len(items) > most:
        raise bad_request(f"at most {most} stop strings", param="stop", code="invalid_value")
    for s in items:
        if not s or len(s) > MAX_STOP_CHARS:
            raise bad_request(f"a stop string must have 1 to {MAX_STOP_CHARS} characters", param="stop",
                              code="invalid_value")
    return items


def _check_prompt(model: Any, prompt: Prompt, max_tokens: int, lock: threading.Lock) -> int:
    """Render and tokenise the prompt alone (context length, placeholders): the LLM positions it takes."""
    from xmm.model.generation import prepare

    try:
        with lock:
            batch, _ = prepare(model, prompt.example(), max_new_tokens=max_tokens)
    except XmmError as e:
        raise from_xmm_error(e) from None
    text_tokens = int(batch.input_ids.shape[1]) - len(batch.media)
    return text_tokens + sum(int(model.num_media_tokens(item)) for item in batch.media)


async def _wait(job: Job) -> Result:
    while True:
        kind, value = await job.events.get()
        if kind == "done":
            return value
        if kind == "error":
            raise value


async def _events(job: Job, cid: str, model_name: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    created = int(time.time())
    try:
        yield _sse(protocol.chunk(cid, model_name, created, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await job.events.get()
            if kind == "delta":
                yield _sse(protocol.chunk(cid, model_name, created, {"content": value}))
            elif kind == "done":
                if value.outputs:
                    yield _sse(protocol.chunk(cid, model_name, created, {"xmm_outputs": value.outputs}))
                yield _sse(protocol.chunk(cid, model_name, created, {}, value.finish_reason))
                if include_usage:
                    usage = protocol.usage(value.prompt_tokens, value.completion_tokens)
                    yield _sse(protocol.chunk(cid, model_name, created, {}, usage_=usage, choices=False))
                break
            else:  # an error after the stream began: OpenAI's clients raise on an event holding "error"
                yield _sse(value.body())
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
