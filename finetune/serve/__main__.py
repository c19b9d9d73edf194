"""python -m finetune.serve --model DIR [--model DIR2 ...] [--host 127.0.0.1] [--port 8000] [--api_key KEY]

Each DIR is a base, a full fine-tune, a LoRA adapter or a merged export; its model id is the directory's
name (with parent directories where two names collide). The API key can also come from the environment
variable BAICHUAN2_SFT_API_KEY.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

import transformers
import uvicorn

from finetune import dtypes, exits
from finetune.serve.app import create_app
from finetune.serve.registry import load_models

API_KEY_ENV = "BAICHUAN2_SFT_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.serve",
        description="An OpenAI-compatible server and a side-by-side chat page for one or more models.",
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="base, full fine-tuned, LoRA adapter or exported directory; repeat to serve several",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api_key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require Authorization: Bearer KEY on /v1 (default: ${API_KEY_ENV}, else none)",
    )
    parser.add_argument(
        "--template", help="baichuan2 or chat_template (default: baichuan2 for Baichuan models)"
    )
    parser.add_argument("--dtype", choices=dtypes.CHOICES, default="auto", help="default: the checkpoint's")
    parser.add_argument(
        "--device", help="cuda, npu, cpu, cuda:1… (default: the accelerator when there is one)"
    )
    return parser.parse_args(argv)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    for path in args.model:
        if not Path(path).is_dir():
            print(f"error: {path}: not a directory", file=sys.stderr)
            return exits.BAD_INPUT
    try:
        models = load_models(args.model, args.dtype, args.device, args.template)
    except ValueError as e:  # LoadError included: one line naming the file
        print(f"error: {e}", file=sys.stderr)
        return exits.BAD_INPUT
    if not args.api_key and not _is_loopback(args.host):
        print(
            f"warning: listening on {args.host} without --api_key: anyone who reaches it can use the models"
        )
    for served in models:
        print(f"model {served.id}: {served.path}")
    print(f"page: http://{args.host}:{args.port}/   API: http://{args.host}:{args.port}/v1")
    uvicorn.run(create_app(models, args.api_key), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
