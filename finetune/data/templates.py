"""Chat templates: a conversation → (input_ids, labels) for training, and → prompt ids for generation.

A template is an object (one class per template, registered in `TEMPLATES` by name) that builds training samples
(its label builder is a method) and generation prompts. Two templates:
- ``baichuan2``: the official Baichuan2 rule (docs/BAICHUAN2.md, "Labels"), implemented on token ids so it is a
  pure function of the encoded messages. User turns are ``[195] + ids`` labelled ``[eos] + [-100] * n`` (the
  eos on the user marker is the "end of the previous reply" target), assistant turns ``[196] + ids`` labelled
  ``[-100] + ids``, and a final eos on both lists. No BOS. A system prompt is raw tokens with no marker,
  labelled -100 (as the official chat prompt builder places it).
- ``chat_template``: the tokenizer's own Jinja chat template. Assistant spans are found by rendering message
  prefixes and comparing token counts, never by searching strings: the tokens that rendering message k adds
  after the generation prompt are message k's supervised tokens (its text and end-of-turn markers).

Masking: every assistant turn (default, as the official script) or the last one only; never user or system text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar

from finetune.data.constants import ASSISTANT_TOKEN_ID, EOS_TOKEN_ID, IGNORE_INDEX, USER_TOKEN_ID
from finetune.data.formats import Conversation, DataError
from finetune.models.baichuan.tokenization_baichuan import BaichuanTokenizer

Sample = tuple[list[int], list[int]]  # (input_ids, labels), same length, unpadded
Sampler = Callable[[int], Sample]  # n → the sample of the system prompt plus the first n messages


class Masking(str, Enum):
    """Which assistant turns are trained on."""

    ALL_TURNS = "all_assistant"
    LAST_TURN = "last_assistant"


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with no special tokens added (the official ``tokenizer.encode`` on Baichuan2,
    whose config turns BOS/EOS off), in one batched call."""
    texts = list(texts)
    if not texts:
        return []
    if isinstance(tokenizer, BaichuanTokenizer):
        # The slow tokenizer runs SentencePiece per text and maps each piece to its id in Python. For a text with
        # no added-token string in it ("<s>", "</s>", "<unk>") its ids are sp.encode(text) (docs/BAICHUAN2.md,
        # "Tokenizer"), which SentencePiece does for the whole batch in C++, ~40x faster; the other texts take the
        # slow path.
        added = list(tokenizer.added_tokens_encoder)
        out = tokenizer.sp_model.encode(texts)
        special = [i for i, text in enumerate(texts) if any(token in text for token in added)]
        if special:
            slow = tokenizer([texts[i] for i in special], add_special_tokens=False)["input_ids"]
            for i, ids in zip(special, slow, strict=True):
                out[i] = list(ids)
        return out
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _supervised_turns(roles: Sequence[str], masking: Masking) -> set[int]:
    assistant = [i for i, role in enumerate(roles) if role == "assistant"]
    if masking is Masking.LAST_TURN:
        return set(assistant[-1:])
    return set(assistant)


def _as_dicts(messages: Sequence[Mapping[str, str] | Any]) -> list[dict[str, str]]:
    return [
        {"role": m["role"], "content": m["content"]}
        if isinstance(m, Mapping)
        else {"role": m.role, "content": m.content}
        for m in messages
    ]


def _rounds(messages: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Split at each user message: a round is a user turn and the replies that follow it."""
    rounds: list[list[dict[str, str]]] = []
    for m in messages:
        if m["role"] == "user" or not rounds:
            rounds.append([])
        rounds[-1].append(m)
    return rounds


def _split_system(messages: Sequence[Mapping[str, str] | Any]) -> tuple[str | None, list[dict[str, str]]]:
    msgs = _as_dicts(messages)
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
    body = msgs[1:] if system is not None else msgs
    if any(m["role"] == "system" for m in body):
        raise ValueError("a system message is only allowed first")
    return system, body


class Template:
    """Turns a `Conversation` into training samples and a message list into a generation prompt."""

    name: ClassVar[str]

    def check(self, tokenizer: Any) -> None:
        """Raise `DataError` when this template cannot work with ``tokenizer``."""

    def encode_batch(self, tokenizer: Any, conversations: Sequence[Conversation]) -> list[Any]:
        """Per conversation, what `sampler` takes as ``encoded`` (None: it tokenizes itself)."""
        return [None] * len(conversations)

    def sampler(
        self, conv: Conversation, tokenizer: Any, masking: Masking = Masking.ALL_TURNS, encoded: Any = None
    ) -> Sampler:
        """A function ``n → sample`` giving the training sample for the system prompt plus the first n messages.
        ``sampler(len(conv.messages))`` is the whole conversation; the truncation policy asks for shorter
        prefixes. Tokenizing happens once, here."""
        raise NotImplementedError

    def tokenize(self, conv: Conversation, tokenizer: Any, masking: Masking = Masking.ALL_TURNS) -> Sample:
        """The untruncated training sample of a whole conversation."""
        return self.sampler(conv, tokenizer, masking)(len(conv.messages))

    def chat_prompt(
        self, tokenizer: Any, messages: Sequence[Mapping[str, str] | Any], max_input_tokens: int
    ) -> list[int]:
        """Prompt ids for generating the next assistant reply to ``messages`` (``{"role", "content"}`` dicts or
        `Message`s, a system message only first). Whole rounds are kept newest first while they fit in
        ``max_input_tokens`` (``model_max_length - max_new_tokens``; the newest always), then the ids are cut
        from the left to ``max_input_tokens``. The ids of a conversation's history are exactly a prefix of its
        training ids."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<template {self.name}>"


class Baichuan2Template(Template):
    """The official Baichuan2 labels and the official chat prompt builder (docs/BAICHUAN2.md)."""

    name = "baichuan2"

    @staticmethod
    def labels(
        turns: Sequence[tuple[str, Sequence[int]]],
        masking: Masking = Masking.ALL_TURNS,
        eos_id: int = EOS_TOKEN_ID,
    ) -> Sample:
        """The official Baichuan2 training sample for encoded turns ``(role, ids)``; role is system/user/assistant.

        With every turn trained, this is the official script's output exactly, including its eos label on
        every user marker (on the first one it is never used, since labels are shifted). Two additions for
        cases the official data never has: no eos label on a user marker right after the system prompt (that
        would teach eos after system text), and with ``last_turn`` masking only the eos that closes the
        trained reply is kept.
        """
        roles = [role for role, _ in turns]
        supervised = _supervised_turns(roles, masking)
        input_ids: list[int] = []
        labels: list[int] = []
        for i, (role, ids) in enumerate(turns):
            ids = list(ids)
            if role == "system":
                input_ids += ids
                labels += [IGNORE_INDEX] * len(ids)
            elif role == "user":
                if masking is Masking.LAST_TURN:
                    closes_reply = (i - 1) in supervised
                else:
                    closes_reply = i == 0 or roles[i - 1] != "system"
                input_ids += [USER_TOKEN_ID] + ids
                labels += [eos_id if closes_reply else IGNORE_INDEX] + [IGNORE_INDEX] * len(ids)
            elif role == "assistant":
                input_ids += [ASSISTANT_TOKEN_ID] + ids
                labels += [IGNORE_INDEX] + (ids if i in supervised else [IGNORE_INDEX] * len(ids))
            else:
                raise ValueError(f"unknown role {role!r}")
        final_label = (
            eos_id if masking is Masking.ALL_TURNS or (len(turns) - 1) in supervised else IGNORE_INDEX
        )
        return input_ids + [eos_id], labels + [final_label]

    @staticmethod
    def texts(conv: Conversation) -> list[str]:
        """The texts to encode, system first when present, in the order `sampler` pairs them with roles."""
        return ([conv.system] if conv.system is not None else []) + [m.content for m in conv.messages]

    def encode_batch(self, tokenizer: Any, conversations: Sequence[Conversation]) -> list[Any]:
        # One tokenizer call for every text of the batch (a fast tokenizer parallelises it).
        texts = [self.texts(c) for c in conversations]
        flat = encode_texts(tokenizer, [t for ts in texts for t in ts])
        encoded, offset = [], 0
        for ts in texts:
            encoded.append(flat[offset : offset + len(ts)])
            offset += len(ts)
        return encoded

    def sampler(
        self, conv: Conversation, tokenizer: Any, masking: Masking = Masking.ALL_TURNS, encoded: Any = None
    ) -> Sampler:
        if encoded is None:
            encoded = encode_texts(tokenizer, self.texts(conv))
        has_system = conv.system is not None
        roles = (["system"] if has_system else []) + [m.role for m in conv.messages]
        turns = list(zip(roles, encoded, strict=True))
        eos = tokenizer.eos_token_id
        return lambda n: self.labels(turns[: n + has_system], masking, eos)

    def chat_prompt(
        self, tokenizer: Any, messages: Sequence[Mapping[str, str] | Any], max_input_tokens: int
    ) -> list[int]:
        system, body = _split_system(messages)
        system_ids = encode_texts(tokenizer, [system])[0] if system else []
        budget = max_input_tokens - len(system_ids)
        history: list[int] = []
        for round_ in reversed(_rounds(body)):
            ids = encode_texts(tokenizer, [m["content"] for m in round_])
            round_ids = [
                t
                for m, m_ids in zip(round_, ids)
                for t in [USER_TOKEN_ID if m["role"] == "user" else ASSISTANT_TOKEN_ID, *m_ids]
            ]
            if history and len(history) + len(round_ids) > budget:
                break
            history = round_ids + history
        prompt = system_ids + history
        if not body or body[-1]["role"] != "assistant":
            prompt.append(ASSISTANT_TOKEN_ID)
        return prompt[-max_input_tokens:] if max_input_tokens > 0 else []


def _render_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return encode_texts(tokenizer, [text])[0]


def _check_prefix(prefix: list[int], full: list[int], k: int) -> None:
    if full[: len(prefix)] != prefix:
        raise DataError(
            "--template chat_template",
            f"the chat template is not prefix-stable at message {k} (rendering the first messages does not "
            "give a prefix of the whole conversation), so assistant spans cannot be found; use another template",
        )


class ChatTemplate(Template):
    """The tokenizer's own Jinja chat template; assistant spans found by rendering prefixes."""

    name = "chat_template"

    def check(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "--template",
                f"tokenizer {type(tokenizer).__name__} has no chat template; pass --template baichuan2 "
                "or use a tokenizer whose tokenizer_config.json defines chat_template",
            )

    @staticmethod
    def spans(tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Tokens of the rendered conversation and, per message, ``(start, content_start, end)``.

        ``[start, end)`` are the tokens rendering message k adds; for an assistant message, ``content_start``
        is where the generation prompt ends, so ``[content_start, end)`` is what the model must produce.
        Raises `DataError` when rendering a prefix is not a token prefix of the whole (a template that
        rewrites earlier turns cannot be masked this way).
        """
        full = _render_ids(tokenizer, messages, add_generation_prompt=False)
        spans = []
        start = 0
        for k, message in enumerate(messages):
            end_ids = _render_ids(tokenizer, messages[: k + 1], add_generation_prompt=False)
            content_start = start
            if message["role"] == "assistant":
                prompt_ids = _render_ids(tokenizer, messages[:k], add_generation_prompt=True)
                _check_prefix(prompt_ids, full, k)
                content_start = len(prompt_ids)
            _check_prefix(end_ids, full, k)
            spans.append((start, content_start, len(end_ids)))
            start = len(end_ids)
        return full, spans

    @staticmethod
    def labels(
        full: Sequence[int],
        spans: Sequence[tuple[int, int, int]],
        roles: Sequence[str],
        masking: Masking = Masking.ALL_TURNS,
    ) -> Sample:
        """Training sample from `spans` output (``full`` cut after the last message wanted, or whole, keeping
        tokens a template adds after the last message): assistant content spans supervised, all else -100."""
        labels = [IGNORE_INDEX] * len(full)
        for i in _supervised_turns(roles, masking):
            _, content_start, stop = spans[i]
            labels[content_start:stop] = full[content_start:stop]
        return list(full), labels

    def sampler(
        self, conv: Conversation, tokenizer: Any, masking: Masking = Masking.ALL_TURNS, encoded: Any = None
    ) -> Sampler:
        messages = conv.to_openai()
        try:
            full, spans = self.spans(tokenizer, messages)
        except DataError:
            raise
        except Exception as e:  # a Jinja `raise_exception` in the template, e.g. "roles must alternate"
            raise DataError(f"conversation {conv.id}", f"chat template failed: {e}") from None
        roles = [m["role"] for m in messages]
        has_system = conv.system is not None

        def sample(n: int) -> Sample:
            k = n + has_system
            if k == len(messages):
                return self.labels(full, spans, roles, masking)
            return self.labels(full[: spans[k - 1][2]], spans[:k], roles[:k], masking)

        return sample

    def chat_prompt(
        self, tokenizer: Any, messages: Sequence[Mapping[str, str] | Any], max_input_tokens: int
    ) -> list[int]:
        system, body = _split_system(messages)
        head = [{"role": "system", "content": system}] if system is not None else []
        rounds = _rounds(body)
        prompt = _render_ids(
            tokenizer, head + [m for r in rounds[-1:] for m in r], add_generation_prompt=True
        )
        for kept in range(2, len(rounds) + 1):
            longer = _render_ids(
                tokenizer, head + [m for r in rounds[-kept:] for m in r], add_generation_prompt=True
            )
            if len(longer) > max_input_tokens:
                break
            prompt = longer
        return prompt[-max_input_tokens:] if max_input_tokens > 0 else []


TEMPLATES: dict[str, Template] = {t.name: t for t in (Baichuan2Template(), ChatTemplate())}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise DataError("--template", f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def resolve_template(name: str | Template | None, tokenizer: Any, model_type: str | None = None) -> Template:
    """The template to use: ``name`` when given, else (None or "auto") baichuan2 for Baichuan models and the
    tokenizer's chat template for others; checked against the tokenizer."""
    if isinstance(name, Template):
        template = name
    elif name not in (None, "auto"):
        template = get_template(name)
    else:
        is_baichuan = (model_type or "").lower().startswith("baichuan") or type(
            tokenizer
        ).__name__.startswith("Baichuan")
        template = TEMPLATES["baichuan2" if is_baichuan else "chat_template"]
    template.check(tokenizer)
    return template
