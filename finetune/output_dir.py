"""One run per output directory: what a run is (base model, mode, data) is recorded in `run.json`; a directory
holding another run's outputs is refused unless this run resumes it (and is the same run) or
`--overwrite_output_dir True` deletes those outputs first.

Without this, a LoRA run into a finished full run's directory left the adapter beside the old weights,
replaced its tokenizer and trainer state, and `--save_total_limit` deleted the old run's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .checkpoints import (
    STAGING_PREFIX,
    checkpoint_problem,
    checkpoints_of,
    newest_intact_checkpoint,
    remove_staging,
)
from .jsonfile import read_json, write_json

logger = logging.getLogger(__name__)

MANIFEST = "run.json"
# What a training run writes into its output directory; only these are deleted by --overwrite_output_dir.
RUN_OUTPUTS = (
    MANIFEST,
    "checkpoint-*",
    f"{STAGING_PREFIX}*",
    "trainer_state.json",
    "training_args.bin",
    "data_report.json",
    "eval_data_report.json",
    "loss_curve.png",
    "README.md",
    "adapter_config.json",
    "adapter_model.*",
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.*",
    "merges.txt",
    "*.py",  # the base's remote code, copied into a full fine-tune
    "runs",  # TensorBoard logs
)
# Outputs that mean "a run was here" (a lone README.md or *.py does not).
_RUN_MARKERS = (MANIFEST, "checkpoint-*", "trainer_state.json", "adapter_model.*", "model*.safetensors")
_IDENTITY = ("base_model_config_sha256", "mode", "data")
# Bytes of each data file hashed (its head and its tail): changes anywhere in between that keep the size are
# not seen, a cost-free check that still catches a different file under the same name.
_DATA_HASH_BYTES = 1 << 20


class OutputDirError(ValueError):
    """The output directory cannot take this run; the message is one line saying why and what to do."""


def data_fingerprint(sources: list[str]) -> list[dict[str, Any]]:
    """Each data source: its path, size and a hash of its first and last MiB (a hub dataset: its name)."""
    prints = []
    for source in sources:
        if not os.path.isfile(source):
            prints.append({"path": source})
            continue
        size = os.path.getsize(source)
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            digest.update(f.read(_DATA_HASH_BYTES))
            if size > 2 * _DATA_HASH_BYTES:
                f.seek(-_DATA_HASH_BYTES, os.SEEK_END)
            digest.update(f.read(_DATA_HASH_BYTES))
        prints.append({"path": os.path.abspath(source), "size": size, "sha256_head_tail": digest.hexdigest()})
    return prints


def config_digest(model_path: str) -> str | None:
    """sha256 of the base model's config.json as parsed (key order and spacing do not matter)."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None
    values = read_json(config)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def run_identity(model_path: str, mode: str, data_sources: list[str]) -> dict[str, Any]:
    return {
        "base_model": model_path,
        "base_model_config_sha256": config_digest(model_path),
        "mode": mode,
        "data": data_fingerprint(data_sources),
    }


def identity_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first way two runs differ, in words; None when they are the same run."""
    if recorded.get("mode") != current["mode"]:
        return f"it is a {recorded.get('mode')} run, this one is {current['mode']}"
    if recorded.get("base_model_config_sha256") != current["base_model_config_sha256"]:
        return f"its base model was {recorded.get('base_model')}, this one's is {current['base_model']} (config differs)"
    before = {json.dumps(d, sort_keys=True): d for d in recorded.get("data", [])}
    now = {json.dumps(d, sort_keys=True): d for d in current["data"]}
    if before.keys() != now.keys():
        gone = [d.get("path") for key, d in before.items() if key not in now]
        new = [d.get("path") for key, d in now.items() if key not in before]
        return f"its data differs (recorded: {', '.join(map(str, gone)) or '-'}; now: {', '.join(map(str, new)) or '-'})"
    return None


def run_outputs(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted({p for pattern in RUN_OUTPUTS for p in output_dir.glob(pattern)})


def _summary(paths: list[Path], limit: int = 4) -> str:
    """The telling names first (weights, trainer state, run.json), then the rest."""
    markers = {p for pattern in _RUN_MARKERS for p in paths if p.match(pattern)}
    names = [p.name for p in sorted(paths, key=lambda p: (p not in markers, p.name))]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_manifest(output_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json(output_dir / MANIFEST)
    except (OSError, json.JSONDecodeError):
        return None


def check_output_dir(
    output_dir: str | Path, identity: dict[str, Any], resume: bool, overwrite: bool
) -> list[Path]:
    """Whether this run may use `output_dir`: returns the earlier run's outputs that --overwrite_output_dir
    will delete (empty otherwise); raises `OutputDirError`. Read-only, so every rank can run it."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"--output_dir {output_dir}: is a file")
    if not output_dir.is_dir() or not any(p for pattern in _RUN_MARKERS for p in output_dir.glob(pattern)):
        return []
    outputs = run_outputs(output_dir)
    if overwrite:
        return outputs
    manifest = read_manifest(output_dir)
    if not resume:
        checkpoints = checkpoints_of(output_dir)
        what = f"{len(checkpoints)} checkpoint(s), " if checkpoints else ""
        raise OutputDirError(
            f"--output_dir {output_dir}: already holds a run's outputs ({what}{_summary(outputs)}); resume it with "
            "--resume_from_checkpoint True, or delete them first with --overwrite_output_dir True, or choose "
            "another --output_dir"
        )
    if manifest is not None:
        difference = identity_difference(manifest, identity)
        if difference:
            raise OutputDirError(
                f"--output_dir {output_dir}: holds a different run, which this one cannot resume: {difference}; "
                "use another --output_dir, or --overwrite_output_dir True to delete it"
            )
    return []


def clear_outputs(outputs: list[Path]) -> None:
    for path in outputs:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def write_manifest(output_dir: str | Path, identity: dict[str, Any], status: str) -> None:
    """run.json: the run's identity, its status (running, preempted, diverged, failed, complete) and when."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    recorded = read_manifest(output_dir) or {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {**identity, "status": status, "started": recorded.get("started", now), "updated": now}
    write_json(output_dir / MANIFEST, manifest)


def set_status(output_dir: str | Path, status: str) -> None:
    """Update the status in run.json, keeping the identity (no-op without a manifest). Best effort: on a full
    disk the run is already failing with its own message."""
    recorded = read_manifest(Path(output_dir))
    if recorded is None:
        return
    identity = {k: recorded[k] for k in ("base_model", *_IDENTITY) if k in recorded}
    try:
        write_manifest(output_dir, identity, status)
    except OSError as e:
        logger.warning("run.json status not updated to %s: %s", status, e)


# ---------------------------------------------------------------- a run's use of it


def resume_target(training_args) -> str | bool | None:
    """--resume_from_checkpoint PATH, or True for the newest checkpoint in output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None or value.lower() in ("", "false", "none"):
        return None
    return True if value.lower() == "true" else value


def run_mode(training_args, lora_args) -> str:
    return "qlora" if lora_args.q_lora else "lora" if training_args.use_lora else "full"


def _every_rank_here(training_args) -> None:
    if training_args.world_size > 1:
        training_args.distributed_state.wait_for_everyone()


def prepare_output_dir(training_args, identity: dict) -> str | None:
    """Refuse an output directory holding another run (or clear it with --overwrite_output_dir), record this
    run in run.json, and pick the checkpoint to resume from: --resume_from_checkpoint True takes the newest
    intact one, skipping damaged ones with a warning, and starts fresh when there is none yet."""
    output_dir = Path(training_args.output_dir)
    resume = resume_target(training_args)
    to_delete = check_output_dir(output_dir, identity, resume is not None, training_args.overwrite_output_dir)
    if (
        training_args.should_log
        and resume
        and read_manifest(output_dir) is None
        and checkpoints_of(output_dir)
    ):
        logger.warning(
            "%s has no run.json (an older version wrote it): cannot check it is the same run", output_dir
        )
    _every_rank_here(training_args)  # every rank looked before any writes
    if training_args.should_save:
        if to_delete:
            clear_outputs(to_delete)
            logger.warning(
                "--overwrite_output_dir: deleted %d outputs of the earlier run in %s",
                len(to_delete),
                output_dir,
            )
        left = remove_staging(output_dir)
        if left:
            logger.info("removed what interrupted saves left: %s", ", ".join(left))
        write_manifest(output_dir, identity, "running")
    _every_rank_here(training_args)
    if resume is None:
        return None
    world_size = training_args.world_size
    if resume is not True:
        problem = checkpoint_problem(resume, world_size)
        if problem:
            raise OutputDirError(f"--resume_from_checkpoint {resume}: {problem}")
        return resume
    checkpoint, skipped = newest_intact_checkpoint(output_dir, world_size)
    for line in skipped if training_args.should_log else ():  # every rank checks; one says so
        logger.warning("skipping damaged checkpoint %s", line)
    if checkpoint is None and skipped:
        raise OutputDirError(
            f"--resume_from_checkpoint True: no intact checkpoint in {output_dir} ({'; '.join(skipped)}); "
            "--overwrite_output_dir True starts over"
        )
    if checkpoint is None:
        logger.info(
            "--resume_from_checkpoint True: no checkpoint in %s yet; starting from the beginning", output_dir
        )
        return None
    logger.info("resuming from %s", checkpoint)
    return str(checkpoint)


def set_run_status(training_args, status: str) -> None:
    if training_args.should_save:
        set_status(training_args.output_dir, status)
