"""The models one server holds: their ids (from the directory names), their `Chat`s and their queues."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finetune.chat import Chat
from finetune.data.formats import DataError


@dataclass
class ServedModel:
    id: str
    path: str
    chat: Chat
    created: int = field(default_factory=lambda: int(time.time()))
    # One generation at a time on this model; a request waits here for its turn, first come first served.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def card(self) -> dict:
        """The OpenAI model object, with vLLM's root (the directory) and max_model_len (the context)."""
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "baichuan2-sft",
            "root": self.path,
            "max_model_len": self.chat.context_length,
        }


def model_ids(paths: Sequence[str | Path]) -> list[str]:
    """Each directory's name; where names collide, with as many parent directories as make each unique
    (runs/a/final and runs/b/final are a/final and b/final)."""
    parts = [Path(p).resolve().parts[1:] for p in paths]
    for i, own in enumerate(parts):
        if own in parts[:i]:
            raise ValueError(f"{paths[i]}: given twice")
    ids = []
    for i, own in enumerate(parts):
        n = 1
        while any(other[-n:] == own[-n:] for j, other in enumerate(parts) if j != i):
            n += 1
        ids.append("/".join(own[-n:]))
    return ids


def load_models(
    paths: Sequence[str | Path], dtype: str = "auto", device: str | None = None, template: str | None = None
) -> list[ServedModel]:
    """Load each directory (see `Chat.from_pretrained`); a directory that does not load raises ValueError
    naming it."""
    served = []
    for id_, path in zip(model_ids(paths), paths, strict=True):
        try:
            chat = Chat.from_pretrained(path, dtype, device, template)
        except (DataError, OSError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e
        served.append(ServedModel(id=id_, path=str(Path(path).resolve()), chat=chat))
    return served
