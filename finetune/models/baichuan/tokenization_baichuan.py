"""Baichuan2's SentencePiece tokenizer on transformers 5 (docs/BAICHUAN2.md, "Tokenizer")."""

import os
from pathlib import Path
from typing import Any

from transformers.tokenization_utils_base import AddedToken
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from ...jsonfile import read_json, write_json

TOKENIZER_MODEL_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


class BaichuanTokenizer(SentencePieceBackend):
    """Baichuan2 tokenizer over a SentencePiece ``tokenizer.model``; a drop-in for the official slow tokenizer.

    Encoding is ``sp.encode(text)`` of the model as shipped: no dummy-prefix space, whitespace kept, digits split,
    byte fallback, and user-defined pieces such as ``<reserved_106>`` (id 195) matched in the text.

    Literal special-token text: ``"<s>"``, ``"</s>"`` and ``"<unk>"`` inside a string are split out as the
    special ids 1, 2 and 0, exactly as the official tokenizer does, so token ids (and the attention mask
    ``ids != 0`` of the official recipe) match it byte for byte. Everywhere else the ids equal
    ``sp.encode(text)``, which would spell those strings out piece by piece; pass ``split_special_tokens=True``
    (at init or per call) to get that behaviour for untrusted text.

    Decoding inverts encoding: ``decode(encode(x)) == x`` for every string, special tokens included. (The official
    ``convert_tokens_to_string`` inserted a space before a special token that follows text; we do not.)
    ``skip_special_tokens=True`` drops ids 0, 1 and 2; the chat markers 195/196 are ordinary pieces.
    ``pad_token`` defaults to ``<unk>`` (id 0), the pad of the official recipe and configs.

    ``add_bos_token`` / ``add_eos_token`` default to True / False as in the official class, but every official
    ``tokenizer_config.json`` sets both to false and that file wins; ``save_pretrained`` writes them back
    (transformers 5 would otherwise drop them and a reload would silently start adding ``<s>``).
    """

    vocab_files_names = {"vocab_file": TOKENIZER_MODEL_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        unk_token: str | AddedToken = "<unk>",
        bos_token: str | AddedToken = "<s>",
        eos_token: str | AddedToken = "</s>",
        pad_token: str | AddedToken | None = "<unk>",
        sp_model_kwargs: dict[str, Any] | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        clean_up_tokenization_spaces: bool = False,
        **kwargs: Any,
    ) -> None:
        if vocab_file is None or not Path(vocab_file).is_file():
            raise ValueError(f"{vocab_file}: SentencePiece {TOKENIZER_MODEL_FILE} not found")
        # Everything our overrides read exists before the base __init__ runs: the official class set its state
        # after super().__init__() and crashed on transformers >= 4.34 (spec §6 #1).
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        # SentencePieceBackend loads the sp model before initialising the generic tokenizer.
        super().__init__(
            vocab_file=str(vocab_file),
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            sp_model_kwargs=sp_model_kwargs or {},
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # Added tokens are not sp pieces (sp would decode "<s>" to "" and "<unk>" to " ⁇ "): emit them verbatim
        # and let sp decode the runs in between, which also reassembles byte-fallback pieces.
        text, run = [], []
        for token in tokens:
            if token in self._added_tokens_encoder:
                text.append(self.sp_model.decode_pieces(run))
                text.append(token)
                run = []
            else:
                run.append(token)
        text.append(self.sp_model.decode_pieces(run))
        return "".join(text)

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        ids = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            ids += bos + token_ids_1 + eos
        return ids

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> tuple[str, ...]:
        """Save in the official layout: tokenizer.model, tokenizer_config.json (with add_bos_token /
        add_eos_token, which transformers 5 leaves out) and special_tokens_map.json."""
        files = super().save_pretrained(save_directory, **kwargs)
        prefix = kwargs.get("filename_prefix")
        prefix = f"{prefix}-" if prefix else ""
        config_path = Path(save_directory) / f"{prefix}{TOKENIZER_CONFIG_FILE}"
        config = read_json(config_path)
        config["add_bos_token"] = self.add_bos_token
        config["add_eos_token"] = self.add_eos_token
        write_json(config_path, config, sort_keys=True)
        map_path = Path(save_directory) / f"{prefix}{SPECIAL_TOKENS_MAP_FILE}"
        # Official layout (AddedToken dicts): transformers <= 4.33 re-applies this file after init and strips the
        # whitespace around plain-string special tokens, which would change the ids of text containing " <s> ".
        token_map = {
            name: value if isinstance(value, list) else _added_token_dict(str(value))
            for name, value in self.special_tokens_map.items()
        }
        write_json(map_path, token_map, sort_keys=True)
        return (*files, str(map_path))


def _added_token_dict(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
