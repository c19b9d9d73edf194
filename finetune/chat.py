"""Chat with a base, full fine-tuned or LoRA adapter directory: an interactive loop, or one reply with --prompt.

    python -m finetune.chat --model output/lora [--system TEXT] [--greedy] [--max_new_tokens N]
    python -m finetune.chat --model output/full --prompt "你好" --greedy

Prompts are built as the official chat prompt builder builds them (`Template.chat_prompt`): for
Baichuan2, the system text, then ``[195] user`` / ``[196] assistant`` with no eos between turns and a trailing
196, whole old rounds dropped and the rest cut from the left to ``model_max_length - max_new_tokens``. Other
models use their tokenizer's chat template. Generation settings are the checkpoint's generation_config.json
over the official chat defaults (temperature 0.3, top_k 5, top_p 0.85, repetition_penalty 1.05,
max_new_tokens 2048, sampling); ``--greedy`` decodes by argmax with no repetition penalty. ``Chat.settings``
applies one request's overrides the same way (``finetune.serve`` uses it: temperature 0 is ``--greedy``).

In the loop: ``clear`` forgets the conversation (the system text stays), ``exit`` (or Ctrl-D) quits, and
Ctrl-C while a reply streams stops that reply and keeps what was said so far.
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import transformers
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from finetune import dtypes, exits
from finetune.data.constants import OFFICIAL_CHAT_GENERATION
from finetune.data.formats import DataError
from finetune.data.templates import Template, resolve_template
from finetune.dtypes import parse_dtype
from finetune.jsonfile import read_json
from finetune.loading import (
    LoadError,
    adapter_base,
    is_adapter_dir,
    load_model_for_inference,
    load_tokenizer,
    resolve_model_path,
)

SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p")
# transformers' values for the sampling-only settings that change nothing. Greedy decoding sets these rather
# than removing the keys: generate() fills a key a config leaves unset from the model's own generation_config
# (the checkpoint's sampling values), then warns that they go unused.
NEUTRAL_SAMPLING = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0}
GENERATION_CONFIG = "generation_config.json"


FINISH_STOP = "stop"  # eos, or a stop string (cut from the text)
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_INTERRUPTED = "interrupted"  # Ctrl-C or the cancel event: the text is what was generated until then


class Reply(NamedTuple):
    text: str
    finish_reason: str  # FINISH_STOP, FINISH_LENGTH or FINISH_INTERRUPTED
    prompt_tokens: int
    completion_tokens: int  # tokens generated, a final eos included

    @property
    def interrupted(self) -> bool:
        return self.finish_reason == FINISH_INTERRUPTED


# ---------------------------------------------------------------- settings


def checkpoint_generation_values(path: str | Path) -> dict[str, Any]:
    """The values of the checkpoint's own generation_config.json (an adapter's, else its base's); {} if none."""
    candidates = [Path(path)]
    if is_adapter_dir(path):
        candidates.append(Path(adapter_base(path)))
    for directory in candidates:
        if (directory / GENERATION_CONFIG).is_file():
            values = read_json(directory / GENERATION_CONFIG)
            values.pop("transformers_version", None)
            return values
    return {}


def generation_settings(
    checkpoint_values: Mapping[str, Any],
    tokenizer: Any,
    greedy: bool = False,
    max_new_tokens: int | None = None,
) -> GenerationConfig:
    """The checkpoint's values over the official chat defaults, then the command-line overrides.

    The official defaults fill what the file leaves out, so a base checkpoint whose file holds only token ids
    still replies with up to 2048 tokens rather than transformers' 20. ``greedy``: argmax decoding, no
    repetition penalty, so a reply can be checked token for token against its training target.
    """
    values = {**OFFICIAL_CHAT_GENERATION, **checkpoint_values}
    if values.get("eos_token_id") is None:
        values["eos_token_id"] = tokenizer.eos_token_id
    if values.get("pad_token_id") is None:
        values["pad_token_id"] = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    return GenerationConfig(**with_overrides(values, greedy=greedy, max_new_tokens=max_new_tokens))


def with_overrides(
    values: Mapping[str, Any],
    greedy: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    max_new_tokens: int | None = None,
    stop: Sequence[str] = (),
) -> dict[str, Any]:
    """Generation values with overrides, None meaning "keep". ``greedy`` or temperature 0 (OpenAI's meaning):
    argmax, no repetition penalty unless one is given; a temperature above 0 samples. top_p and top_k only
    apply when sampling (transformers warns about them otherwise). ``stop``: strings that end generation."""
    values = dict(values)
    if greedy or temperature == 0:
        values = {k: v for k, v in values.items() if k not in SAMPLING_ONLY} | NEUTRAL_SAMPLING
        values |= {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0}
    elif temperature is not None:
        values |= {"do_sample": True, "temperature": temperature}
    if values.get("do_sample"):
        values |= {k: v for k, v in (("top_p", top_p), ("top_k", top_k)) if v is not None}
    if repetition_penalty is not None:
        values["repetition_penalty"] = repetition_penalty
    if max_new_tokens is not None:
        values["max_new_tokens"] = max_new_tokens
    if stop:
        values["stop_strings"] = list(stop)
    return values


def context_length(config: Any, tokenizer: Any) -> int:
    """Tokens the model takes: Baichuan2's model_max_length (4096), else max_position_embeddings, else the
    tokenizer's limit when it states a real one."""
    for name in ("model_max_length", "max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        return tokenizer.model_max_length
    raise ValueError(
        f"{type(config).__name__}: no context length (model_max_length or max_position_embeddings)"
    )


class _StopOnEvent(StoppingCriteria):
    """Ends generation once the event is set (Ctrl-C in the thread that reads the stream, or the caller's
    cancel event)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class _StopText:
    """Passes streamed text on, ending it before the first stop string (with none, all of it passes): the end
    of the text that could be the start of a stop string is held back until the next piece decides."""

    def __init__(self, stops: Sequence[str], emit: Callable[[str], Any]):
        self.stops, self.emit = stops, emit
        self.text, self.sent, self.stopped = "", 0, False

    def feed(self, piece: str) -> None:
        if self.stopped:
            return
        self.text += piece
        end = _first_stop(self.text, self.stops)
        if end is not None:
            self.stopped = True
        else:
            end = len(self.text) - self._held_back()
        if end > self.sent:
            self.emit(self.text[self.sent : end])
            self.sent = end

    def flush(self) -> None:
        if not self.stopped and len(self.text) > self.sent:
            self.emit(self.text[self.sent :])

    def _held_back(self) -> int:
        longest = min(len(self.text), max((len(s) for s in self.stops), default=1) - 1)
        for n in range(longest, 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stops):
                return n
        return 0


# ---------------------------------------------------------------- the chat model


@dataclass
class Chat:
    """A model, its tokenizer and the settings that turn a conversation into its next reply."""

    model: Any
    tokenizer: Any
    template: Template
    generation_config: GenerationConfig
    context_length: int

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: str = "auto",
        device: str | None = None,
        template: str | None = None,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        allow_base_mismatch: bool = False,
    ) -> Chat:
        """Load a base, full fine-tuned or adapter directory. ``dtype``: auto (the checkpoint's), bf16, fp16,
        fp32; ``device``: cuda, npu, cpu… (default: the accelerator when there is one)."""
        from finetune.devices import device_type

        path = resolve_model_path(str(path))
        model = load_model_for_inference(
            path,
            dtype=parse_dtype(dtype),
            device=device or device_type(),
            allow_base_mismatch=allow_base_mismatch,
        )
        tokenizer = load_tokenizer(path)
        config = generation_settings(checkpoint_generation_values(path), tokenizer, greedy, max_new_tokens)
        # generate() fills what a passed config leaves unset from the model's own; make them one and the same
        # (on the transformers model itself when peft wraps it).
        getattr(model, "get_base_model", lambda: model)().generation_config = config
        return cls(
            model=model,
            tokenizer=tokenizer,
            template=resolve_template(template, tokenizer, getattr(model.config, "model_type", None)),
            generation_config=config,
            context_length=context_length(model.config, tokenizer),
        )

    def settings(self, **overrides: Any) -> GenerationConfig:
        """This chat's generation config with one request's overrides (the arguments of `with_overrides`)."""
        values = self.generation_config.to_diff_dict()
        values.pop("transformers_version", None)
        return GenerationConfig(**with_overrides(values, **overrides))

    def max_input_tokens(self, settings: GenerationConfig | None = None) -> int:
        """``model_max_length - max_new_tokens`` as the official builder; a budget that leaves no room for a
        prompt (a small model asked for 2048 new tokens) keeps half the context for it instead."""
        budget = self.context_length - (settings or self.generation_config).max_new_tokens
        return budget if budget > 0 else self.context_length // 2

    def prompt_ids(
        self, messages: Sequence[Mapping[str, str]], max_input_tokens: int | None = None
    ) -> list[int]:
        """The prompt for the next reply, oldest rounds dropped and then cut from the left to
        ``max_input_tokens`` (default: `max_input_tokens()`)."""
        if max_input_tokens is None:
            max_input_tokens = self.max_input_tokens()
        return self.template.chat_prompt(self.tokenizer, messages, max_input_tokens)

    def reply(
        self,
        messages: Sequence[Mapping[str, str]],
        on_text: Callable[[str], Any] | None = None,
        settings: GenerationConfig | None = None,
        cancel: threading.Event | None = None,
    ) -> Reply:
        """The next assistant reply to ``messages`` (``{"role", "content"}``, a system message only first).

        ``settings``: a config from `settings()` (default: this chat's). ``on_text`` receives the reply piece
        by piece while it is generated. A KeyboardInterrupt meanwhile, or setting ``cancel`` from another
        thread, stops generation and returns what was generated so far, marked interrupted. The text is the
        new tokens decoded without special tokens, up to (not including) eos or the first stop string.
        """
        config = copy.deepcopy(settings or self.generation_config)
        prompt = self.prompt_ids(messages, self.max_input_tokens(config))
        config.max_new_tokens = min(config.max_new_tokens, self.context_length - len(prompt))
        input_ids = torch.tensor([prompt], dtype=torch.long, device=self.model.device)
        stop = cancel or threading.Event()
        stops = list(config.stop_strings or [])
        text_out = _StopText(stops, on_text) if on_text is not None else None
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome: dict[str, Any] = {}

        def generate() -> None:
            try:
                outcome["ids"] = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                    streamer=streamer,
                    tokenizer=self.tokenizer,  # for config.stop_strings
                )
            except BaseException as e:  # re-raised in the caller's thread below
                outcome["error"] = e
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if text_out is not None and piece:
                    text_out.feed(piece)
            if text_out is not None:
                text_out.flush()
        except KeyboardInterrupt:
            stop.set()
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        new_tokens = outcome["ids"][0, len(prompt) :].tolist()
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        end = _first_stop(text, stops)
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        if stop.is_set():
            reason = FINISH_INTERRUPTED
        elif end is not None or (new_tokens and new_tokens[-1] in eos):
            reason = FINISH_STOP
        else:
            reason = FINISH_LENGTH if len(new_tokens) >= config.max_new_tokens else FINISH_STOP
        return Reply(text[:end], reason, len(prompt), len(new_tokens))


# ---------------------------------------------------------------- interactive loop


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def conversation_loop(
    chat: Chat,
    system: str | None = None,
    read: Callable[[str], str] = input,
    write: Callable[[str], Any] = _write,
) -> list[dict[str, str]]:
    """Read user turns until ``exit`` or end of input, streaming each reply; returns the final history."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    write("Commands: clear (forget the conversation), exit. Ctrl-C stops a reply.\n")
    while True:
        try:
            line = read("\nUser: ")
        except EOFError:
            write("\n")
            break
        except KeyboardInterrupt:
            write("\n(type exit to quit)\n")
            continue
        text = line.strip()
        if text in ("exit", "quit"):
            break
        if text == "clear":
            messages = list(start)
            write("(conversation cleared)\n")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        write("\nAssistant: ")
        reply = chat.reply(messages, on_text=write)
        write(" [stopped]\n" if reply.interrupted else "\n")
        messages.append({"role": "assistant", "content": reply.text})
    return messages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m finetune.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="base, full fine-tuned or LoRA adapter directory")
    parser.add_argument("--prompt", help="answer this one user message and exit")
    parser.add_argument("--system", help="system text placed before the conversation")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding, no repetition penalty")
    parser.add_argument(
        "--max_new_tokens", type=int, help="longest reply in tokens (default: generation_config's)"
    )
    parser.add_argument(
        "--template", help="baichuan2 or chat_template (default: baichuan2 for Baichuan models)"
    )
    parser.add_argument("--dtype", choices=dtypes.CHOICES, default="auto", help="default: the checkpoint's")
    parser.add_argument(
        "--device", help="cuda, npu, cpu, cuda:1… (default: the accelerator when there is one)"
    )
    parser.add_argument(
        "--allow_base_mismatch", action="store_true", help="load an adapter onto a base it was not trained on"
    )
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max_new_tokens must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # the weight-loading bar would interleave with the chat
    try:
        chat = Chat.from_pretrained(
            args.model,
            dtype=args.dtype,
            device=args.device,
            template=args.template,
            greedy=args.greedy,
            max_new_tokens=args.max_new_tokens,
            allow_base_mismatch=args.allow_base_mismatch,
        )
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return exits.BAD_INPUT
    except (DataError, OSError, ValueError) as e:
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return exits.BAD_INPUT
    if args.prompt is None:
        conversation_loop(chat, args.system)
        return 0
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    reply = chat.reply(messages, on_text=_write)
    _write(" [stopped]\n" if reply.interrupted else "\n")
    return 130 if reply.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
