"""A readable fake tokenizer for table tests: one token per character, ids you can read.

A character ``c`` has id ``1000 + ord(c)`` ("a" → 1097, "你" → 21320), so expected ids are written as
``ids("你好")``. Special tokens keep Baichuan2's ids (unk/pad 0, bos 1, eos 2, user 195, assistant 196), and
ChatML markers are single tokens, so the same class serves the baichuan2 template and chat templates.
It is a real `transformers.PreTrainedTokenizer`: `apply_chat_template`, `decode`, pickling for
`datasets.map(num_proc>1)` all behave as with a real slow tokenizer.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizer

CHAR_OFFSET = 1000
SPECIAL = {
    "<unk>": 0,
    "<s>": 1,
    "</s>": 2,
    "<|im_start|>": 10,
    "<|im_end|>": 11,
    "<reserved_106>": 195,
    "<reserved_107>": 196,
}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL) + ")")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ids(text: str) -> list[int]:
    """The fake tokenizer's ids for plain text (no special tokens)."""
    return [CHAR_OFFSET + ord(c) for c in text]


class CharTokenizer(PreTrainedTokenizer):
    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, chat_template: str | None = None, **kwargs):
        kwargs.setdefault("unk_token", "<unk>")
        kwargs.setdefault("pad_token", "<unk>")
        kwargs.setdefault("bos_token", "<s>")
        kwargs.setdefault("eos_token", "</s>")
        super().__init__(chat_template=chat_template, **kwargs)

    @property
    def vocab_size(self) -> int:
        return CHAR_OFFSET + 0x10000

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(SPECIAL)
        vocab.update({chr(i): CHAR_OFFSET + i for i in range(32, 127)})
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [piece for part in _SPECIAL_RE.split(text) for piece in ([part] if part in SPECIAL else part)]

    def _convert_token_to_id(self, token: str) -> int:
        if token in SPECIAL:
            return SPECIAL[token]
        return CHAR_OFFSET + ord(token) if len(token) == 1 else 0

    def _convert_id_to_token(self, index: int) -> str:
        for token, special_id in SPECIAL.items():
            if special_id == index:
                return token
        return chr(index - CHAR_OFFSET) if index >= CHAR_OFFSET else "<unk>"

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        # Like Baichuan2's shipped config: add_bos_token and add_eos_token are both off.
        return token_ids_0 + (token_ids_1 or [])

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()


def official_sample(tokenizer, record: dict, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """The official fine-tune.py construction (docs/BAICHUAN2.md, "Labels"), written out plainly as a reference:
    `from == "human"` is the user, anything else the assistant; head-cut to max_length; no padding."""
    input_ids, labels = [], []
    for message in record["conversations"]:
        value_ids = tokenizer.encode(message["value"])
        if message["from"] == "human":
            input_ids += [195] + value_ids
            labels += [2] + [-100] * len(value_ids)
        else:
            input_ids += [196] + value_ids
            labels += [-100] + value_ids
    input_ids.append(2)
    labels.append(2)
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels
