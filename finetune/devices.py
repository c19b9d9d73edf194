"""The accelerator this process trains on (CUDA, Ascend NPU or CPU) and the settings that follow from it:
distributed backend, peak FLOP/s for MFU, launcher environment for CPU ranks."""

from __future__ import annotations

import functools
import importlib.util
import os
from datetime import timedelta
from pathlib import Path

import torch


@functools.cache
def import_torch_npu() -> bool:
    """Import torch_npu when installed: it registers `torch.npu` and DeepSpeed's NPU accelerator (HCCL)."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401

    # Packed rows change shape every step; ahead-of-time compilation per shape costs more than it saves.
    if os.environ.get("NPU_JIT_COMPILE", "0") != "1":
        torch.npu.set_compile_mode(jit_compile=False)
    return True


@functools.cache
def device_type() -> str:
    """ "cuda", "npu" or "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    if import_torch_npu() and torch.npu.is_available():
        return "npu"
    return "cpu"


def has_accelerator() -> bool:
    return device_type() != "cpu"


def cpu_has_bf16_matmul() -> bool:
    """AVX512-BF16 or AMX. Without them a CPU emulates bf16 matmuls: 7x (hidden 64) to over 100x (a reduction
    over 125,696 rows) slower than fp32 on an AVX2 EPYC."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def default_ddp_backend() -> str | None:
    """Collective backend for torchrun/DDP; None lets accelerate choose (nccl on CUDA, gloo on CPU)."""
    return "hccl" if device_type() == "npu" else None


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


# Dense bf16/fp16 tensor-core peak per device, FLOP/s, from vendor data sheets (SXM variants).
_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "H20": 148e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
}


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


def peak_flops(device_name: str) -> float | None:
    """Peak FLOP/s for a CUDA device name such as "NVIDIA A100-SXM4-80GB"; None when unknown."""
    for key, flops in _PEAK_FLOPS.items():
        if key in device_name:
            return flops
    return None


def current_peak_flops() -> float | None:
    """Peak FLOP/s of this process's device, for MFU; None off GPU or for an unlisted card."""
    if device_type() != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name())


def cpu_launch_env() -> dict[str, str]:
    """Environment for `deepspeed --num_gpus N` on a host without accelerators: N CPU ranks over gloo,
    one OpenMP thread each so the ranks do not oversubscribe the cores."""
    return {
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
