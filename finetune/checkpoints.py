"""Checkpoints that are whole or absent: written under a hidden staging name and renamed to `checkpoint-N`
once every rank has written (and the files are synced), and checked before a resume, falling back to the
newest intact one when a kill or a full disk damaged the newest.

A checkpoint is intact when its trainer state parses, its weights and every state file (optimizer, scheduler,
RNG, DeepSpeed's ZeRO shards of every rank) are present, non-empty and structurally whole
(`filecheck`: safetensors headers against file sizes, PyTorch archives' directories).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from finetune.jsonfile import read_json

from .filecheck import file_problem

STAGING_PREFIX = ".staging-"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Any one of these holds a checkpoint's weights (a sharded model through its index).
WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class SaveError(RuntimeError):
    """A checkpoint or the final model could not be written; one line naming the path and the cause."""


def checkpoints_of(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` directories, newest (highest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def staging_path(final: Path) -> Path:
    return final.with_name(STAGING_PREFIX + final.name)


def checkpoint_problem(path: str | Path, world_size: int) -> str | None:
    """What makes this checkpoint unusable for resuming `world_size` ranks, or None when it is intact."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    if not any(path.iterdir()):
        return "empty directory"
    state = path / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE} (the save did not finish)"
    problems = [_named(state)]
    deepspeed_tag = _deepspeed_tag(path)
    if isinstance(deepspeed_tag, str) and deepspeed_tag.startswith("!"):
        return deepspeed_tag[1:]
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights and deepspeed_tag is None:
        return "no model or adapter weights"
    for index in (w for w in weights if w.name.endswith(".index.json")):
        problems.append(_named(index) or _shards_problem(index))
    if deepspeed_tag is not None:
        problems.append(_zero_shards_problem(path / deepspeed_tag, world_size))
    else:
        for required in ("optimizer.pt", "scheduler.pt"):
            if not (path / required).is_file():
                problems.append(f"no {required}")
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    problems += [f"no {name}" for name in rng if not (path / name).is_file()]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        problems.append(_named(file, root=path))
    return next((p for p in problems if p), None)


def _named(file: Path, root: Path | None = None) -> str | None:
    problem = file_problem(file)
    return f"{file.relative_to(root) if root else file.name} is {problem}" if problem else None


def _shards_problem(index: Path) -> str | None:
    weight_map = read_json(index).get("weight_map", {})
    missing = sorted({shard for shard in weight_map.values() if not (index.parent / shard).is_file()})
    return f"{index.name} names missing shard(s): {', '.join(missing)}" if missing else None


def _deepspeed_tag(path: Path) -> str | None:
    """The ZeRO tag directory named by DeepSpeed's `latest` file; None without DeepSpeed; "!problem" when
    `latest` points nowhere."""
    latest = path / "latest"
    if not latest.is_file():
        tags = [p.name for p in path.glob("global_step*") if p.is_dir()]
        return "!no 'latest' file beside DeepSpeed's " + tags[0] if tags else None
    tag = latest.read_text(encoding="utf-8").strip()
    if not tag or not (path / tag).is_dir():
        return f"!'latest' names {tag or 'nothing'}, which is not there"
    return tag


def _zero_shards_problem(tag_dir: Path, world_size: int) -> str | None:
    """ZeRO writes one optimizer shard per data-parallel rank (`*zero_pp_rank_R_mp_rank_00_optim_states.pt`,
    `bf16_` prefixed for bf16 stage 1/2) and model states (`mp_rank_00_model_states.pt`, or one per rank
    under ZeRO-3)."""
    names = {p.name for p in tag_dir.iterdir()}
    if not any(n.endswith("model_states.pt") for n in names):
        return f"{tag_dir.name} holds no model states"
    for rank in range(world_size):
        if not any(n.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt") for n in names):
            return f"{tag_dir.name} has no optimizer shard of rank {rank}"
    return None


def newest_intact_checkpoint(output_dir: str | Path, world_size: int) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that can be resumed, and one line for each newer one skipped as damaged."""
    skipped = []
    for checkpoint in checkpoints_of(output_dir):
        problem = checkpoint_problem(checkpoint, world_size)
        if problem is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint}: {problem}")
    return None, skipped


def sync_tree(path: Path) -> None:
    """fsync every file and directory below `path` (and `path`), whichever rank wrote them: renaming a
    directory whose files are still only in the page cache could survive a crash as a checkpoint of empty
    files."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            _fsync(Path(root, name))
        _fsync(Path(root))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def promote(staging: Path, final: Path) -> None:
    """Give a fully written (and synced) staging directory its final name, replacing an older directory of that
    name (a damaged checkpoint a fallback resumed past)."""
    sync_tree(staging)
    if final.exists():
        trash = final.with_name(f"{STAGING_PREFIX}old-{final.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(staging, final)
    _fsync(final.parent)


def remove_staging(output_dir: str | Path) -> list[str]:
    """Delete what interrupted saves left under staging names; returns their names."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    left = sorted(p for p in output_dir.iterdir() if p.name.startswith(STAGING_PREFIX))
    for path in left:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return [p.name for p in left]


def free_space(path: str | Path) -> str:
    """Free space on the file system holding `path` (or its nearest existing parent), for error messages."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if free < 1024 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"
