"""Chat templates: a conversation → (input_ids, labels) for training, and → prompt ids for generation.

Two templates:
- ``baichuan2``: the official Baichuan2 rule (BAICHUAN2_SPEC.md §2.3), implemented on token ids so it is a
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
from typing import Any

from finetune.data.constants import ASSISTANT_TOKEN_ID, EOS_TOKEN_ID, IGNORE_INDEX, USER_TOKEN_ID
from finetune.data.formats import Conversation, DataError
from finetune.models.baichuan.tokenization_baichuan import BaichuanTokenizer

TEMPLATES = ("baichuan2", "chat_template")

Sample = tuple[list[int], list[int]]  # (input_ids, labels), same length, unpadded


class Masking(str, Enum):
    """Which assistant turns are trained on."""

    ALL_TURNS = "all_assistant"
    LAST_TURN = "last_assistant"


def resolve_template(template: str | None, tokenizer: Any, model_type: str | None = None) -> str:
    """The template to use: ``template`` when given, else (None or "auto") baichuan2 for Baichuan models and the
    tokenizer's chat template for others."""
    template = None if template == "auto" else template
    if template is not None and template not in TEMPLATES:
        raise DataError("--template", f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if template is None:
        is_baichuan = (model_type or "").lower().startswith("baichuan") or type(
            tokenizer
        ).__name__.startswith("Baichuan")
        template = "baichuan2" if is_baichuan else "chat_template"
    if template == "chat_template" and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "--template",
            f"tokenizer {type(tokenizer).__name__} has no chat template; pass --template baichuan2 "
            "or use a tokenizer whose tokenizer_config.json defines chat_template",
        )
    return template


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with no special tokens added (the official ``tokenizer.encode`` on Baichuan2,
    whose config turns BOS/EOS off), in one batched call."""
    texts = list(texts)
    if not texts:
        return []
    if isinstance(tokenizer, BaichuanTokenizer):
        # The slow tokenizer runs SentencePiece per text and maps each piece to its id in Python. For a text with
        # no added-token string in it ("<s>", "</s>", "<unk>") its ids are sp.encode(text) (BAICHUAN2_SPEC §2.3),
        # which SentencePiece does for the whole batch in C++, ~40x faster; the other texts take the slow path.
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


# ---------------------------------------------------------------- baichuan2


def baichuan2_tokens(
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
    final_label = eos_id if masking is Masking.ALL_TURNS or (len(turns) - 1) in supervised else IGNORE_INDEX
    return input_ids + [eos_id], labels + [final_label]


def _baichuan2_turns(conv: Conversation, encoded: Sequence[Sequence[int]]) -> list[tuple[str, Sequence[int]]]:
    """Pair the conversation's roles with its encoded texts (system first when present)."""
    roles = (["system"] if conv.system is not None else []) + [m.role for m in conv.messages]
    return list(zip(roles, encoded, strict=True))


def conversation_texts(conv: Conversation) -> list[str]:
    """The texts to encode for the baichuan2 template, in the order `_baichuan2_turns` pairs them."""
    return ([conv.system] if conv.system is not None else []) + [m.content for m in conv.messages]


# ---------------------------------------------------------------- chat_template


def _render_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return encode_texts(tokenizer, [text])[0]


def chat_template_spans(tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[tuple[int, int, int]]]:
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


def _check_prefix(prefix: list[int], full: list[int], k: int) -> None:
    if full[: len(prefix)] != prefix:
        raise DataError(
            "--template chat_template",
            f"the chat template is not prefix-stable at message {k} (rendering the first messages does not "
            "give a prefix of the whole conversation), so assistant spans cannot be found; use another template",
        )


def chat_template_tokens(
    full: Sequence[int],
    spans: Sequence[tuple[int, int, int]],
    roles: Sequence[str],
    masking: Masking = Masking.ALL_TURNS,
) -> Sample:
    """Training sample from `chat_template_spans` output (``full`` cut after the last message wanted, or whole,
    keeping tokens a template adds after the last message): assistant content spans supervised, all else -100."""
    labels = [IGNORE_INDEX] * len(full)
    for i in _supervised_turns(roles, masking):
        _, content_start, stop = spans[i]
        labels[content_start:stop] = full[content_start:stop]
    return list(full), labels


# ---------------------------------------------------------------- per-conversation sampling


def prefix_sampler(
    conv: Conversation,
    tokenizer: Any,
    template: str,
    masking: Masking = Masking.ALL_TURNS,
    encoded: Sequence[Sequence[int]] | None = None,
    eos_id: int | None = None,
) -> Callable[[int], Sample]:
    """A function ``n → sample`` giving the training sample for the system prompt plus the first n messages.

    ``sampler(len(conv.messages))`` is the whole conversation; the truncation policy asks for shorter
    prefixes. Tokenising happens once, here. ``encoded`` (baichuan2 only) supplies the ids of
    `conversation_texts(conv)` when they were encoded in a batch.
    """
    has_system = conv.system is not None
    if template == "baichuan2":
        if encoded is None:
            encoded = encode_texts(tokenizer, conversation_texts(conv))
        turns = _baichuan2_turns(conv, encoded)
        eos = tokenizer.eos_token_id if eos_id is None else eos_id
        return lambda n: baichuan2_tokens(turns[: n + has_system], masking, eos)
    if template == "chat_template":
        messages = conv.to_openai()
        try:
            full, spans = chat_template_spans(tokenizer, messages)
        except DataError:
            raise
        except Exception as e:  # a Jinja `raise_exception` in the template, e.g. "roles must alternate"
            raise DataError(f"conversation {conv.id}", f"chat template failed: {e}") from None
        roles = [m["role"] for m in messages]

        def sample(n: int) -> Sample:
            k = n + has_system
            if k == len(messages):
                return chat_template_tokens(full, spans, roles, masking)
            return chat_template_tokens(full[: spans[k - 1][2]], spans[:k], roles[:k], masking)

        return sample
    raise DataError("--template", f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def tokenize_conversation(
    conv: Conversation, tokenizer: Any, template: str, masking: Masking = Masking.ALL_TURNS
) -> Sample:
    """The untruncated training sample of a whole conversation."""
    return prefix_sampler(conv, tokenizer, template, masking)(len(conv.messages))


# ---------------------------------------------------------------- generation prompts


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


def build_chat_prompt(
    tokenizer: Any, messages: Sequence[Mapping[str, str] | Any], template: str, max_input_tokens: int
) -> list[int]:
    """Prompt ids for generating the next assistant reply (BAICHUAN2_SPEC.md §5 for baichuan2).

    ``messages``: ``{"role", "content"}`` dicts (or `Message`s), a system message only first.
    ``max_input_tokens`` is ``model_max_length - max_new_tokens``. Whole rounds are kept newest first while
    they fit (the newest always), then the ids are cut from the left to ``max_input_tokens``.
    The ids of a conversation's history are exactly a prefix of its training ids.
    """
    msgs = _as_dicts(messages)
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
    body = msgs[1:] if system is not None else msgs
    if any(m["role"] == "system" for m in body):
        raise ValueError("a system message is only allowed first")
    if template == "baichuan2":
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
    if template == "chat_template":
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
    raise DataError("--template", f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
