"""Tokenize (and pack) training data exactly as training will, into the data cache, and write it out with a data
report.

    python -m finetune.preprocess --model_name_or_path M --data_path D [D ...] --model_max_length 512 \\
        [--output OUT.jsonl] [--packing True] [--data_cache_dir DIR] [--template T] [--truncation turns|official] \\
        [--mask all_assistant|last_assistant] [--skip_invalid True] [--data_format F] [--preprocessing_num_workers N]

The data flags are `finetune/sft.py`'s (`DataOptions`; ``--masking``, ``--format``, ``--num_proc`` and
``--cache_dir`` are kept as aliases). The tokenized samples, and with ``--packing True`` the packed rows, go to the
data cache (``--data_cache_dir``, finetune/data/cache.py) under the keys `finetune/sft.py` looks up: run this once
before a multi-node run (on shared storage, or on every node) and no rank tokenizes at start-up. OUT.jsonl, when
given, gets one line per kept sample, in input order: {"id": <source id or null>, "input_ids": [...], "labels":
[...]} (unpadded), and the data report goes to OUT.report.json; a short table goes to the console.
Bad data ends the run with one line naming the file, record and problem (exit status 2).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from finetune.data.cache import resolve_cache_dir
from finetune.data.dataset import build_dataset
from finetune.data.formats import DataError
from finetune.data.options import DataOptions
from finetune.data.pipeline import prepare


@dataclass
class PreprocessArguments:
    model_name_or_path: str = field(metadata={"help": "model directory (its tokenizer is used)"})
    output: str | None = field(
        default=None, metadata={"help": "JSONL file to write the samples to (default: the cache only)"}
    )
    model_max_length: int = field(default=512, metadata={"help": "as in training"})
    packing: bool = field(
        default=False,
        metadata={
            "help": "also pack the samples into model_max_length rows, as sft.py will (its cache entry)"
        },
    )


@dataclass
class PreprocessOptions(DataOptions):
    data_cache_dir: str | None = field(
        default=None,
        metadata={
            "aliases": ["--cache_dir"],
            "help": DataOptions.__dataclass_fields__["data_cache_dir"].metadata["help"],
        },
    )


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((PreprocessArguments, PreprocessOptions), prog="python -m finetune.preprocess")


def report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def main(argv: list[str] | None = None) -> int:
    args, options = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import finetune  # noqa: F401  (registers the Baichuan classes with the Auto factories)
    from finetune.loading import load_tokenizer, model_type_of

    try:
        tokenizer = load_tokenizer(args.model_name_or_path, model_max_length=args.model_max_length)
    except OSError as e:
        print(
            f"{args.model_name_or_path}: cannot load a tokenizer ({str(e).splitlines()[0]})", file=sys.stderr
        )
        return 2
    cache_dir = resolve_cache_dir(options.data_cache_dir)
    model_type = model_type_of(args.model_name_or_path)
    try:
        report = prepare(
            tokenizer,
            options,
            args.model_max_length,
            packing=args.packing,
            cache_dir=cache_dir,
            model_type=model_type,
        ).report
        # The samples (not packed rows) for the JSONL: with a cache, read back from the entry just built.
        samples = build_dataset(
            tokenizer, options, args.model_max_length, cache_dir=cache_dir, model_type=model_type
        )[0]
    except DataError as e:
        print(e, file=sys.stderr)
        return 2
    where = f"data cache {cache_dir}" if cache_dir is not None else "no data cache"
    if args.output is None:
        print(f"prepared {report.samples_kept} samples ({where})")
    else:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as f:
            for row in samples.select_columns(["id", "input_ids", "labels"]):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        report.write(report_path(output))
        print(f"wrote {report.samples_kept} samples to {output} (report: {report_path(output)}; {where})")
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
