"""Process-group life cycle around the Trainer: DeepSpeed ranks on CPU hosts (gloo), their shared-memory
buffers, and tearing the group down at exit."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch

from .devices import device_type


def needs_cpu_deepspeed_state(deepspeed_config) -> bool:
    """A DeepSpeed rank (started by a launcher) on a host without accelerators."""
    return bool(deepspeed_config) and device_type() == "cpu" and int(os.environ.get("LOCAL_RANK", -1)) != -1


def init_cpu_deepspeed_state(timeout_s: int) -> None:
    """Set up accelerate's process state for DeepSpeed CPU ranks, to be reused by TrainingArguments
    (`accelerator_config.use_configured_state`).

    accelerate finds no backend for DeepSpeed without an accelerator: it lets DeepSpeed initialise gloo but then
    counts one process, so every rank believes it trains alone (world_size 1, a wrong global batch). Naming the
    backend DeepSpeed's CPU accelerator uses makes it count the ranks."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo", timeout=timedelta(seconds=timeout_s))
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    unlink_shm_allreduce_buffer()


def unlink_shm_allreduce_buffer() -> None:
    """Remove the name of this rank's DeepSpeed shared-memory allreduce buffer once every rank has mapped it.

    DeepSpeed's CPU ranks on one host each create /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>
    (66 MB) and map their peers' at start-up, and never unlink them: every run, finished, failed or killed,
    left its buffers in /dev/shm, that is in RAM, until the host ran out of memory. After the barrier all
    ranks hold their mappings, which outlive the name, so the memory is freed when the last rank exits."""
    # DeepSpeed's own condition for using shared memory: every rank on this host.
    if not torch.distributed.is_initialized():
        return
    if int(os.environ.get("LOCAL_SIZE", 0)) != torch.distributed.get_world_size():
        return
    torch.distributed.barrier()
    name = "_".join(
        (
            "deepspeed_allreduce_buffer",
            str(os.getuid()),
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            str(torch.distributed.get_rank()),
        )
    )
    Path("/dev/shm", name).unlink(missing_ok=True)


def finish_distributed(wait: bool = True) -> None:
    """Tear the process group down, after waiting for every rank (rank 0 may still be writing the model).

    Left to interpreter exit, the gloo group's threads can outlive it on a rank that finished first and
    abort the process ("terminate called without an active exception"), failing a run that completed.
    `wait=False` on an error every rank meets alike (bad data, bad flags): no rank is left to wait for.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def cpu_launch_env() -> dict[str, str]:
    """Environment for `deepspeed --num_gpus N` on a host without accelerators: N CPU ranks over gloo,
    one OpenMP thread each so the ranks do not oversubscribe the cores."""
    return {
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
