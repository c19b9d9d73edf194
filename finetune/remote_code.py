"""What a Baichuan2 model directory written by this project carries so that other tools load it right.

- Remote code: the portable `configuration/modeling/tokenization_baichuan.py`
  (finetune/models/baichuan/portable), never the base's files, with `auto_map` in config.json and
  tokenizer_config.json naming them. `trust_remote_code=True` then loads the directory, without this
  repository, on transformers 4.33 and 5.
- Special tokens marked: `added_tokens_decoder` in tokenizer_config.json flags `<unk>`, `<s>`, `</s>` and the
  chat markers `<reserved_106>` (195) and `<reserved_107>` (196) as special, so converters (llama.cpp) make
  them control tokens and `skip_special_tokens` drops the markers; `additional_special_tokens` lists the
  markers for tokenizers that read the older key. Their ids are unchanged: all five are pieces of the
  SentencePiece model.
- A Jinja `chat_template` rendering exactly what the official prompt builder (`build_chat_input`) encodes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from finetune.data.constants import ASSISTANT_TOKEN_ID, USER_TOKEN_ID
from finetune.jsonfile import read_json, write_json
from finetune.models.baichuan.portable import (
    DIRECTORY,
    MODEL_AUTO_MAP,
    REMOTE_CODE_FILES,
    TOKENIZER_AUTO_MAP,
)

CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
TOKENIZER_MODEL = "tokenizer.model"
USER_TOKEN = "<reserved_106>"
ASSISTANT_TOKEN = "<reserved_107>"
# id -> content of every token marked special; the ids are fixed by the Baichuan2 SentencePiece model.
SPECIAL_TOKENS = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    USER_TOKEN_ID: USER_TOKEN,
    ASSISTANT_TOKEN_ID: ASSISTANT_TOKEN,
}

# The official prompt: the system text raw, then per message the user (195) or assistant (196) marker and its
# text, no eos between turns, and a trailing 196 to generate a reply (unless the last message is the
# assistant's, which is then continued). Assistant text sits in {% generation %} blocks, so
# return_assistant_tokens_mask marks the trained spans. A prompt builder truncates to fit the context; a
# template cannot, so this renders whole conversations.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if not loop.first -%}{{ raise_exception('a system message is only allowed first') }}{%- endif -%}"
    "{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}"
    f"{USER_TOKEN}{{{{ message['content'] }}}}"
    "{%- elif message['role'] == 'assistant' -%}"
    f"{ASSISTANT_TOKEN}{{% generation %}}{{{{ message['content'] }}}}{{% endgeneration %}}"
    "{%- else -%}{{ raise_exception('unknown role ' ~ message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and (messages | length == 0 or messages[-1]['role'] != 'assistant') -%}"
    f"{ASSISTANT_TOKEN}"
    "{%- endif -%}"
)


def is_baichuan_dir(model_dir: str | Path) -> bool:
    config = Path(model_dir) / CONFIG
    return config.is_file() and read_json(config).get("model_type") == "baichuan"


def ship_remote_code(model_dir: str | Path) -> list[str]:
    """Copy the portable remote code into ``model_dir`` and point ``auto_map`` at it (in config.json, and in
    tokenizer_config.json when there is one). Returns the file names written."""
    model_dir = Path(model_dir)
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(DIRECTORY / name, model_dir / name)
    _set_auto_map(model_dir / CONFIG, MODEL_AUTO_MAP)
    if (model_dir / TOKENIZER_CONFIG).is_file():
        _set_auto_map(model_dir / TOKENIZER_CONFIG, TOKENIZER_AUTO_MAP)
    return list(REMOTE_CODE_FILES)


def _set_auto_map(path: Path, entries: dict[str, Any]) -> None:
    """Rewrite ``path`` only when its auto_map lacks ``entries`` (an official file already names them all)."""
    config = read_json(path)
    auto_map = config.get("auto_map", {})
    if any(auto_map.get(key) != value for key, value in entries.items()):
        config["auto_map"] = {**auto_map, **entries}
        write_json(path, config, sort_keys=True)


def _token(content: str) -> dict[str, Any]:
    # No "special" key here: transformers 4.33 builds AddedToken(**entry), and its AddedToken has none. Explicit
    # lstrip/rstrip False, or 4.33 strips the whitespace around the token in text.
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def has_special_pieces(sp_model_path: Path) -> bool:
    """Whether the SentencePiece model holds the marked pieces at their ids (every Baichuan2 one does; the marks
    name ids, so another layout must not get them)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    return all(
        i < sp.get_piece_size() and sp.id_to_piece(i) == content for i, content in SPECIAL_TOKENS.items()
    )


def mark_tokenizer_files(model_dir: str | Path) -> bool:
    """Mark the special tokens and add the chat template in ``model_dir``'s tokenizer files (in place). Returns
    False, changing nothing, when there are no tokenizer files with the Baichuan2 special-token layout."""
    model_dir = Path(model_dir)
    if not (model_dir / TOKENIZER_CONFIG).is_file() or not (model_dir / TOKENIZER_MODEL).is_file():
        return False
    if not has_special_pieces(model_dir / TOKENIZER_MODEL):
        return False
    config = read_json(model_dir / TOKENIZER_CONFIG)
    config["added_tokens_decoder"] = {
        **config.get("added_tokens_decoder", {}),
        **{str(i): {**_token(content), "special": True} for i, content in SPECIAL_TOKENS.items()},
    }
    markers = [_token(USER_TOKEN), _token(ASSISTANT_TOKEN)]
    config["additional_special_tokens"] = [{"__type": "AddedToken", **m} for m in markers]
    config["chat_template"] = CHAT_TEMPLATE
    write_json(model_dir / TOKENIZER_CONFIG, config, sort_keys=True)
    if (model_dir / SPECIAL_TOKENS_MAP).is_file():
        tokens_map = read_json(model_dir / SPECIAL_TOKENS_MAP)
        tokens_map["additional_special_tokens"] = markers
        write_json(model_dir / SPECIAL_TOKENS_MAP, tokens_map, sort_keys=True)
    return True
