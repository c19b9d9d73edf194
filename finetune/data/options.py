"""The data flags: how records become training samples. One dataclass, parsed by `HfArgumentParser` in
`finetune/sft.py`, `finetune.preprocess` and `finetune.evaluate`, so each flag has one name and one meaning
everywhere (older spellings of the tools are kept as aliases)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataOptions:
    data_path: list[str] = field(
        metadata={"help": "Data files, directories or globs (json, jsonl, parquet); several allowed."}
    )
    data_format: Literal["auto", "sharegpt", "openai", "alpaca"] | None = field(
        default=None,
        metadata={
            "aliases": ["--format"],
            "help": "Record format; default: detected per file (sharegpt/BELLE, openai messages, alpaca).",
        },
    )
    template: Literal["auto", "baichuan2", "chat_template"] | None = field(
        default=None,
        metadata={
            "help": "baichuan2 (the official labels) or chat_template (the tokenizer's own); "
            "default: baichuan2 for Baichuan models, chat_template otherwise."
        },
    )
    truncation: Literal["turns", "official"] = field(
        default="turns",
        metadata={"help": "turns: keep whole turns that fit; official: cut at model_max_length tokens."},
    )
    mask: Literal["all_assistant", "last_assistant"] = field(
        default="all_assistant",
        metadata={
            "aliases": ["--masking"],
            "help": "Train every assistant turn (official) or only the last.",
        },
    )
    skip_invalid: bool = field(
        default=False,
        metadata={"help": "Drop (and count) malformed records instead of stopping at the first."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "aliases": ["--num_proc"],
            "help": "Processes for tokenization and packing (datasets num_proc).",
        },
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where tokenized and packed data is kept (none: a temporary directory). Default: "
            "$BAICHUAN2_SFT_DATA_CACHE, else $XDG_CACHE_HOME/baichuan2-sft/data (~/.cache/baichuan2-sft/data)."
        },
    )
