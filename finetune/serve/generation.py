"""One reply generated on a worker thread for the event loop: its turn in the model's queue, its text as it
comes, its end, and stopping it when the client goes away.

Generation runs in a thread (`Chat.reply` blocks) and hands each piece of text to the loop. The locks it
waited for belong to the thread from then on and are released when it ends, so a cancelled request never
lets the next one onto a model that is still generating.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Mapping, Sequence

import torch
from fastapi import Request
from transformers import GenerationConfig

from finetune.chat import Reply
from finetune.serve.registry import ServedModel

POLL_S = 0.2  # how often a queued request checks whether its client is still there

log = logging.getLogger("finetune.serve")


async def _acquire(lock: asyncio.Lock, cancel: threading.Event) -> bool:
    while not cancel.is_set():
        try:
            await asyncio.wait_for(lock.acquire(), timeout=POLL_S)
            return True
        except TimeoutError:
            continue
    return False


async def watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Sets ``cancel`` once the client disconnects (the request body has been read: what ASGI delivers next
    is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue
    cancel.set()


class Generation:
    """``sampling``: the server's lock for sampled replies. They draw from torch's one process-wide random
    generator, so they run one at a time across all models (otherwise a seed could not reproduce a reply);
    greedy replies only wait for their own model."""

    def __init__(
        self,
        model: ServedModel,
        sampling: asyncio.Lock,
        messages: Sequence[Mapping[str, str]],
        settings: GenerationConfig,
        seed: int | None,
        stream: bool,
    ):
        self.model, self.sampling, self.messages = model, sampling, messages
        self.settings, self.seed, self.stream = settings, seed, stream
        self.cancel = threading.Event()
        self.reply: Reply | None = None
        self._queue: asyncio.Queue = asyncio.Queue()

    async def start(self) -> bool:
        """Wait for the model (and the sampler) to be free, then start generating; False if cancelled first."""
        locks = [self.model.lock] + ([self.sampling] if self.settings.do_sample else [])
        held: list[asyncio.Lock] = []
        try:
            for lock in locks:
                if not await _acquire(lock, self.cancel):
                    return False
                held.append(lock)
        finally:
            if len(held) < len(locks):  # cancelled while waiting: no thread will release them
                for lock in held:
                    lock.release()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, args=(loop, held), daemon=True).start()
        return True

    def _run(self, loop: asyncio.AbstractEventLoop, held: list[asyncio.Lock]) -> None:
        def on_text(piece: str) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, piece)

        outcome: Reply | Exception
        try:
            if self.seed is not None and self.settings.do_sample:  # under the sampling lock: see the class
                torch.manual_seed(self.seed)
            outcome = self.model.chat.reply(
                self.messages, on_text if self.stream else None, self.settings, self.cancel
            )
        except Exception as e:  # handed to the loop, which answers with it
            outcome = e
        loop.call_soon_threadsafe(self._finish, outcome, held)

    def _finish(self, outcome: Reply | Exception, held: list[asyncio.Lock]) -> None:
        """On the loop, when the thread ends: free the model, log the outcome (here, so that a reply whose
        client has gone is logged too), hand it to the request."""
        for lock in held:
            lock.release()
        if isinstance(outcome, Exception):
            log.error("%s: generation failed", self.model.id, exc_info=outcome)
        else:
            ending = "cancelled: the client disconnected" if outcome.interrupted else outcome.finish_reason
            log.info(
                "%s: %d prompt + %d completion tokens, %s",
                self.model.id,
                outcome.prompt_tokens,
                outcome.completion_tokens,
                ending,
            )
        self._queue.put_nowait(outcome)

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's text piece by piece (only when streaming); `reply` is set when this ends. A generation
        error is raised here."""
        while True:
            item = await self._queue.get()
            if isinstance(item, str):
                yield item
            elif isinstance(item, Exception):
                raise item
            else:
                self.reply = item
                return
