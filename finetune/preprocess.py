"""Tokenize training data exactly as training will, and write it out with a data report.

    python -m finetune.preprocess --model_name_or_path M --data_path D [D ...] --model_max_length 512 \\
        --output OUT.jsonl [--template T] [--truncation turns|official] [--masking all_assistant|last_assistant] \\
        [--skip_invalid True] [--format F]

OUT.jsonl gets one line per kept sample, in input order: {"id": <source id or null>, "input_ids": [...],
"labels": [...]} (unpadded). The data report goes to OUT.report.json and a short table to the console.
Bad data ends the run with one line naming the file, record and problem (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from finetune.data.dataset import DEFAULT_CACHE_DIR, Truncation, build_dataset, format_report, write_report
from finetune.data.formats import FORMATS, DataError
from finetune.data.templates import TEMPLATES, Masking


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="model directory (its tokenizer is used)")
    parser.add_argument(
        "--data_path", required=True, nargs="+", help="files, directories, globs or a hub name"
    )
    parser.add_argument("--model_max_length", type=int, default=512)
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--template", choices=("auto", *TEMPLATES), default="auto")
    parser.add_argument("--truncation", choices=[t.value for t in Truncation], default=Truncation.TURNS.value)
    parser.add_argument("--masking", choices=[m.value for m in Masking], default=Masking.ALL_TURNS.value)
    parser.add_argument(
        "--skip_invalid", type=_bool, default=False, help="drop bad records instead of stopping"
    )
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto", dest="fmt")
    parser.add_argument("--num_proc", type=int, default=None, help="tokenizing processes")
    parser.add_argument(
        "--cache_dir", default=DEFAULT_CACHE_DIR, help='tokenized-data cache; "none" disables it'
    )
    return parser


def report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    try:
        dataset, report = build_dataset(
            tokenizer,
            args.data_path,
            template=args.template,
            model_max_length=args.model_max_length,
            truncation=args.truncation,
            masking=args.masking,
            skip_invalid=args.skip_invalid,
            fmt=args.fmt,
            num_proc=args.num_proc,
            cache_dir=None if args.cache_dir.lower() == "none" else args.cache_dir,
            model_type=model_type_of(args.model_name_or_path),
        )
    except DataError as e:
        print(e, file=sys.stderr)
        return 2
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as f:
        for row in dataset.select_columns(["id", "input_ids", "labels"]):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_report(report, report_path(output))
    print(f"wrote {report['samples_kept']} samples to {output} (report: {report_path(output)})")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
