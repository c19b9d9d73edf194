"""Where prepared data is kept, and under which key.

Every prepared artefact (tokenized samples, packed rows) is a directory ``<cache dir>/<key>``, the key a hash of
everything that changes its contents, built in a temporary directory beside it and renamed into place when
complete: a crash leaves no half entry, and two processes building the same key (several nodes on shared storage)
end with one. Later runs, and the other ranks of a run, memory-map it.

The cache directory is ``--data_cache_dir``, else ``$BAICHUAN2_SFT_DATA_CACHE``, else
``$XDG_CACHE_HOME/baichuan2-sft/data`` (``~/.cache/baichuan2-sft/data``): never the working directory, so runs
started from different places share it. ``--data_cache_dir none`` keeps prepared data in a temporary directory
removed when the process exits (what ``cache_dir=None`` means in the Python API).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from finetune.data.formats import DataError, data_files_signature

CACHE_ENV = "BAICHUAN2_SFT_DATA_CACHE"
CACHE_FLAG = "--data_cache_dir"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "baichuan2-sft" / "data"


def resolve_cache_dir(value: str | os.PathLike | None) -> Path | None:
    """The cache directory for a ``--data_cache_dir`` value: None or "" the default, "none" None (no cache)."""
    if value is None or str(value) == "":
        return default_cache_dir()
    if str(value).lower() == "none":
        return None
    return Path(value).expanduser()


_temporary: list[Path] = []


def temporary_cache() -> Path:
    """A directory for prepared data when caching is off, removed when the process exits (the data stays
    memory-mapped until then)."""
    if not _temporary:
        _temporary.append(Path(tempfile.mkdtemp(prefix="baichuan2-sft-data-")))
        atexit.register(shutil.rmtree, _temporary[0], ignore_errors=True)
    return _temporary[0]


# ---------------------------------------------------------------- keys


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what makes a tokenizer produce its ids: its class, vocabulary file (or vocabulary),
    added and special tokens, and chat template."""
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if isinstance(vocab_file, str) and os.path.isfile(vocab_file):
        vocab = _sha256_file(vocab_file)
    else:
        vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    parts = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "vocab": vocab,
        "added": sorted((i, str(t)) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()),
        "special": [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code_fingerprint() -> str:
    """Hash of every module of finetune/data: any change to reading, templates, truncation or packing invalidates
    the cache."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()


def digest(material: Any) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_key(settings: dict[str, Any], sources: Sequence[str], tokenizer: Any) -> str:
    """Key of tokenized samples: the settings, the data files (path, size, mtime), the tokenizer and the code."""
    return digest(
        {
            **settings,
            "data": data_files_signature(sources),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "code": code_fingerprint(),
        }
    )


# ---------------------------------------------------------------- entries

COMPLETE = "report.json"  # written last: an entry without it is not one


def find_entry(cache_dir: Path, key: str) -> Path | None:
    entry = cache_dir / key
    return entry if (entry / COMPLETE).is_file() else None


@contextmanager
def new_entry(cache_dir: Path, key: str) -> Iterator[Path]:
    """A temporary directory to build entry ``key`` in; renamed to ``cache_dir/key`` when the block ends without
    an error (unless another process got there first: its entry is the same). Raises `DataError` when the cache
    directory cannot be written."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{key}-"))
    except OSError as e:
        raise DataError(
            str(cache_dir),
            f"cannot write the data cache here ({e.strerror}); give a writable directory with {CACHE_FLAG} "
            f"or {CACHE_ENV}",
        ) from None
    try:
        yield tmp
        try:
            os.replace(tmp, cache_dir / key)
        except OSError:
            if find_entry(cache_dir, key) is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
