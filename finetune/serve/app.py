"""The HTTP side: ``/v1/models``, ``/v1/chat/completions`` (JSON, or server-sent events with ``stream``) and
the page at ``/``.

Requests are checked before they queue: an unknown model is a 404, a bad field a 400 naming it, messages
that leave no room for the reply a 400 (``context_length_exceeded``). Unlike ``finetune.chat``, which drops
the oldest rounds to make room as the official ``model.chat()`` does, the server never drops what a client
sent: the client owns its history. Without ``max_tokens`` the reply may use the checkpoint's max_new_tokens or
what the context leaves, whichever is less.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from transformers import GenerationConfig

from finetune.serve import errors
from finetune.serve.errors import APIError
from finetune.serve.generation import Generation, watch_disconnect
from finetune.serve.registry import ServedModel
from finetune.serve.schema import ChatCompletionRequest, chunk, completion, completion_id, usage

STATIC = Path(__file__).parent / "static"
CLIENT_GONE = 499  # nginx's "client closed request": logged for a request whose client left while queued

log = logging.getLogger("finetune.serve")


def _bearer(api_key: str) -> Callable[[Request], Any]:
    expected = f"Bearer {api_key}".encode()

    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, expected):
            raise APIError(
                401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key"
            )

    return check


def _find(models: dict[str, ServedModel], name: str) -> ServedModel:
    if name not in models:
        raise APIError(
            404,
            f"model {name!r} not found; this server has {', '.join(models)}",
            param="model",
            code="model_not_found",
        )
    return models[name]


def request_settings(
    model: ServedModel, messages: list[dict[str, str]], body: ChatCompletionRequest
) -> GenerationConfig:
    """The request's generation config, after checking that the whole prompt and the reply fit the context."""
    chat = model.chat
    prompt_tokens = len(chat.prompt_ids(messages, max_input_tokens=sys.maxsize))
    context = chat.context_length
    requested = body.requested_tokens()
    if requested is None and prompt_tokens >= context:
        raise APIError(
            400,
            f"messages: {prompt_tokens} tokens, which leaves no room for a reply in the {context}-token "
            f"context of model {model.id}; shorten the messages",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is not None and prompt_tokens + requested > context:
        raise APIError(
            400,
            f"messages: {prompt_tokens} tokens, and max_tokens {requested}: more than the {context}-token "
            f"context of model {model.id}; shorten the messages or lower max_tokens",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is None:
        requested = min(chat.generation_config.max_new_tokens, context - prompt_tokens)
    try:
        return chat.settings(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            repetition_penalty=body.repetition_penalty,
            max_new_tokens=requested,
            stop=body.stop or (),
        )
    except ValueError as e:  # a combination transformers' GenerationConfig rejects
        raise APIError(400, f"generation settings: {e}") from e


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _complete(gen: Generation, request: Request) -> Any:
    watcher = asyncio.create_task(watch_disconnect(request, gen.cancel))
    try:
        if not await gen.start():
            log.info("%s: cancelled while queued: the client disconnected", gen.model.id)
            return Response(status_code=CLIENT_GONE)
        async for _ in gen.pieces():
            pass
    except Exception as e:  # logged where the generation ended
        raise APIError(500, f"generation failed: {type(e).__name__}: {e}") from e
    finally:
        gen.cancel.set()  # a no-op once the reply is complete; stops it if this request was cancelled
        watcher.cancel()
    reply = gen.reply
    counts = usage(reply.prompt_tokens, reply.completion_tokens)
    return completion(completion_id(), gen.model.id, reply.text, reply.finish_reason, counts)


async def _stream(gen: Generation, request: Request, include_usage: bool) -> AsyncIterator[str]:
    id_, model = completion_id(), gen.model.id
    watcher = asyncio.create_task(watch_disconnect(request, gen.cancel))
    try:
        yield _sse(chunk(id_, model, {"role": "assistant", "content": ""}))
        if not await gen.start():
            log.info("%s: cancelled while queued: the client disconnected", model)
            return
        async for piece in gen.pieces():
            yield _sse(chunk(id_, model, {"content": piece}))
        reply = gen.reply
        if reply.interrupted:
            return
        yield _sse(chunk(id_, model, {}, reply.finish_reason))
        if include_usage:
            yield _sse(chunk(id_, model, None, counts=usage(reply.prompt_tokens, reply.completion_tokens)))
        yield "data: [DONE]\n\n"
    except Exception as e:  # logged where the generation ended; the status line has gone out, so the error
        # travels in the stream, as OpenAI's do
        yield _sse(errors.error_body(500, f"generation failed: {type(e).__name__}: {e}"))
    finally:
        gen.cancel.set()  # the client went away mid-stream (or, once complete, a no-op)
        watcher.cancel()


def create_app(models: Sequence[ServedModel], api_key: str | None = None) -> FastAPI:
    """The application serving ``models``; with ``api_key``, every ``/v1`` route needs
    ``Authorization: Bearer api_key`` (the page itself holds no data and stays open)."""
    by_id = {m.id: m for m in models}
    sampling = asyncio.Lock()
    # No /docs: FastAPI's API explorer loads its scripts from a CDN, and the machine may be offline.
    app = FastAPI(title="baichuan2-sft", docs_url=None, redoc_url=None)
    errors.install(app)
    api = APIRouter(prefix="/v1", dependencies=[Depends(_bearer(api_key))] if api_key else [])

    @api.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [m.card() for m in models]}

    @api.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return _find(by_id, model_id).card()

    @api.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        model = _find(by_id, body.model)
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        settings = request_settings(model, messages, body)
        gen = Generation(model, sampling, messages, settings, body.seed, body.stream)
        if not body.stream:
            return await _complete(gen, request)
        return StreamingResponse(
            _stream(gen, request, body.include_usage()),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
