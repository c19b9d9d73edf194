"""Full-model outputs as drop-in replacements for their base directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from .jsonfile import read_json, write_json
from .remote_code import is_baichuan_dir, mark_tokenizer_files, ship_remote_code


def local_model_dir(name_or_path: str, cache_dir: str | None = None) -> Path | None:
    """The directory holding a model's files: the path itself, or the hub cache's snapshot of an id."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # not cached (or not a hub id): nothing to copy from
        return None


TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt")
# Config keys training changes that a drop-in replacement must have as the base had them.
BASE_CONFIG_KEYS = ("auto_map", "use_cache")


def complete_model_dir(output_dir: str | Path, base_dir: str | Path) -> None:
    """Make a full fine-tuned output a drop-in replacement for its base: the base's tokenizer files and
    generation_config.json as they were (training never changes them), and the config keys training touched
    (auto_map, use_cache) back to the base's values, with `torch_dtype` beside transformers 5's `dtype` for
    older readers (the official code, vLLM, FastChat).

    Remote code: a Baichuan2 output gets this project's portable files (which load on transformers 4.33 and
    5; the official ones fail on 5), its special tokens marked and a chat template (`finetune.remote_code`);
    any other model keeps its base's own `*.py`."""
    output_dir, base_dir = Path(output_dir), Path(base_dir)
    patterns = (*TOKENIZER_FILES, "generation_config.json")
    if not is_baichuan_dir(base_dir):
        patterns = ("*.py", *patterns)
    for source in sorted({p for pattern in patterns for p in base_dir.glob(pattern) if p.is_file()}):
        shutil.copy2(source, output_dir / source.name)
    base_config, out_config = base_dir / "config.json", output_dir / "config.json"
    if base_config.is_file() and out_config.is_file():
        base = read_json(base_config)
        saved = read_json(out_config)
        saved.update({key: base[key] for key in BASE_CONFIG_KEYS if key in base})
        if "dtype" in saved:
            saved.setdefault("torch_dtype", saved["dtype"])
        write_json(out_config, saved, sort_keys=True)
    if is_baichuan_dir(output_dir):
        ship_remote_code(output_dir)
        mark_tokenizer_files(output_dir)
