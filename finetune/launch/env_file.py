"""DeepSpeed's env file: the environment every rank gets when the pdsh runner starts it over ssh.

pdsh starts ranks in a fresh remote shell, so nothing set on the launch node reaches them unless
DeepSpeed exports it: variables named PYTHON*, UCX*, MV2*, MLFLOW* (plus NCCL* on CUDA, HCCL*/ASCEND*
on NPU), and the KEY=VALUE lines of `.deepspeed_env` in ~ and in the launch directory (the name comes
from DS_ENV_FILE; an absolute path there names one file). This module merges those files with
forwarded variables and explicit pairs into one file, refusing what DeepSpeed would mangle.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from pathlib import Path

# What the ranks need that DeepSpeed does not forward on every accelerator.
DEFAULT_FORWARD = ("HF_*", "TRANSFORMERS_*", "TOKENIZERS_PARALLELISM", "NCCL_*", "HCCL_*", "GLOO_*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(ValueError):
    """An env file or variable that cannot be forwarded; the message is one line for the user."""


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """KEY=VALUE lines. DeepSpeed splits every line on '=', so blank and comment lines break it."""
    entries = {}
    for number, line in enumerate(text.splitlines(), start=1):
        key, eq, value = line.partition("=")
        if not eq or not _ENV_KEY.fullmatch(key.strip()):
            raise EnvFileError(
                f"{source} line {number}: expected KEY=VALUE, got {line!r} (DeepSpeed reads every line)"
            )
        entries[key.strip()] = value.strip()
    return entries


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    entries = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not _ENV_KEY.fullmatch(key):
            raise EnvFileError(f"--env {pair!r}: expected KEY=VALUE")
        entries[key] = value
    return entries


def forwarded_env(environ: Mapping[str, str], patterns: list[str]) -> dict[str, str]:
    return {
        key: value
        for key, value in sorted(environ.items())
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)
    }


def merge_env(*layers: Mapping[str, str]) -> dict[str, str]:
    """Later layers win. DeepSpeed wraps values in double quotes for the remote shell, so a value
    holding a quote or a newline would reach the ranks mangled: refuse it."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    for key, value in merged.items():
        if '"' in value or "\n" in value:
            raise EnvFileError(
                f"environment variable {key}: a value with '\"' or a newline cannot be forwarded"
            )
    return merged


def default_env_files(environ: Mapping[str, str]) -> list[Path]:
    """The files DeepSpeed's runner reads, in its order (home, then the launch directory)."""
    name = environ.get("DS_ENV_FILE", ".deepspeed_env")
    return [Path.home() / name, Path.cwd() / name]


def format_env_file(entries: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in entries.items())


def collect_env(environ: Mapping[str, str], forward: list[str], pairs: list[str]) -> dict[str, str]:
    """Forwarded variables (DEFAULT_FORWARD + `forward` globs), then the env files DeepSpeed would
    read, then KEY=VALUE `pairs`: DeepSpeed's own precedence (its files override exports), pairs last."""
    files = [
        parse_env_file(p.read_text(encoding="utf-8"), str(p))
        for p in default_env_files(environ)
        if p.is_file()
    ]
    return merge_env(forwarded_env(environ, [*DEFAULT_FORWARD, *forward]), *files, parse_env_pairs(pairs))
