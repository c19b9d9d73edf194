"""The OpenAI chat-completions request as the server accepts it, and the JSON objects it answers with.

Fields OpenAI defines that change nothing here (user, frequency_penalty, ...) are accepted and ignored; those
whose meaning the server cannot honour (n > 1, tools, logprobs) are rejected. ``top_k`` and
``repetition_penalty`` are extensions, named as vLLM names them.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 4  # OpenAI's limit


def _text_of(content: Any) -> Any:
    """OpenAI content is a string or a list of parts; only text parts have a meaning for these models."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ValueError('only text parts ({"type": "text", "text": ...}) are supported')
        texts.append(part["text"])
    return "".join(texts)


def _as_list(value: Any) -> Any:
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    raise ValueError(f"a string or a list of up to {MAX_STOP_STRINGS} strings, not {type(value).__name__}")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name"

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, BeforeValidator(_text_of)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    stop: Annotated[list[str] | None, BeforeValidator(_as_list)] = Field(None, max_length=MAX_STOP_STRINGS)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | None = None
    tools: list[Any] | None = None

    @field_validator("messages")
    @classmethod
    def _system_first(cls, messages: list[Message]) -> list[Message]:
        late = [i for i, m in enumerate(messages) if m.role == "system" and i > 0]
        if late:
            raise ValueError(f"a system message is only allowed first (message {late[0]} is one)")
        return messages

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, stop: list[str] | None) -> list[str] | None:
        if stop is not None and not all(stop):
            raise ValueError("stop strings must not be empty")
        return stop

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("logprobs", "tools")
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if value:
            raise ValueError("not supported by this server")
        return value

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(id_: str, model: str, text: str, finish_reason: str, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": counts,
    }


def chunk(
    id_: str,
    model: str,
    delta: dict[str, str] | None,
    finish_reason: str | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A streamed chunk; ``delta`` None makes the usage-only chunk (no choices) that closes a stream with
    stream_options.include_usage."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )
    out: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if counts is not None:
        out["usage"] = counts
    return out
