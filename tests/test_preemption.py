"""Preemption through the real launchers, two CPU ranks (gloo), a tiny Baichuan2-7B under ZeRO-2 LoRA:

- SIGTERM to every process of `deepspeed --num_gpus 2 finetune/sft.py` (what Slurm's preemption, `scancel`
  and a terminal's Ctrl-C do): every rank finishes its step, they save one complete checkpoint together and
  exit 75, nothing keeps running; then the newest checkpoint's rank-1 ZeRO shard is cut in half (a kill
  during a save) and `--resume_from_checkpoint True` skips it naming the shard, resumes from the previous
  one and replays the same losses;
- SIGTERM to `python -m finetune.launch` alone reaches the ranks: it exits 75 itself and leaves no process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, free_port

from finetune import exits
from finetune.checkpoints import checkpoint_problem, newest_intact_checkpoint
from finetune.distributed import cpu_launch_env

DEEPSPEED = Path(sys.executable).with_name("deepspeed")
TIMEOUT_S = 300
MAX_STEPS = 12  # far more than the steps a signal after checkpoint-2 lets through; the resume runs to it
ARGS = (
    "--model_max_length 128 --logging_steps 1 --report_to none --disable_tqdm True --seed 0 --use_lora True "
)
ARGS += f"--deepspeed ds_configs/zero2.json --per_device_train_batch_size 2 --save_steps 2 --max_steps {MAX_STEPS}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("preemption")


@pytest.fixture(scope="module")
def run_args(tiny7b, workdir):
    records = json.loads((ROOT / "data" / "sample_chat.json").read_text(encoding="utf-8"))[:16]
    data = workdir / "chat.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return [*ARGS.split(), "--model_name_or_path", str(tiny7b), "--data_path", str(data)]


def launcher_env() -> dict[str, str]:
    env = {**os.environ, **cpu_launch_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=launcher_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(condition, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def wait_until_no_process_runs(out: Path) -> None:
    """Every process of the run (launchers and ranks, found by the output directory on their command line)
    has exited; any still alive long after the signal is an orphan that keeps training."""
    import psutil

    def alive() -> list:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if str(out) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        return found

    deadline = time.monotonic() + TIMEOUT_S
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive()
    for process in left:
        process.kill()
    assert not left, f"still running after the signal: {[p.pid for p in left]}"


def stopped_step(output: str) -> int:
    lines = [line for line in output.splitlines() if "stopped by SIGTERM at step" in line]
    assert len(lines) == 1, output[-3000:]  # said once, by rank 0
    return int(lines[0].split("at step ")[1].split(":")[0])


def losses(checkpoint_or_run: Path) -> dict[int, float]:
    history = json.loads((checkpoint_or_run / "trainer_state.json").read_text())["log_history"]
    return {row["step"]: row["loss"] for row in history if "loss" in row}


@pytest.mark.distributed
def test_sigterm_to_every_rank_saves_and_a_damaged_zero_shard_is_skipped(run_args, workdir):
    out, log = workdir / "deepspeed", workdir / "deepspeed.log"
    launcher = [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port()), "finetune/sft.py"]
    process = start([*launcher, *run_args, "--output_dir", str(out)], log)
    wait_for(lambda: (out / "checkpoint-2").is_dir(), process, log)
    os.killpg(process.pid, signal.SIGTERM)
    wait_until_no_process_runs(out)
    output = log.read_text()
    step = stopped_step(output)
    assert 2 <= step < MAX_STEPS and "Traceback" not in output
    checkpoint = out / f"checkpoint-{step}"
    assert checkpoint_problem(checkpoint, world_size=2) is None  # complete: both ranks' shards, RNG states
    assert not (out / "adapter_model.safetensors").exists()  # not finished, and does not look it
    assert json.loads((out / "run.json").read_text())["status"] == "preempted"
    preempted_losses = losses(checkpoint)
    assert sorted(preempted_losses) == list(range(1, step + 1))

    shard = checkpoint / f"global_step{step}" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    fallback = newest_intact_checkpoint(out, world_size=2)[0]
    assert fallback is not None and fallback != checkpoint
    resume = [*launcher[:4], str(free_port()), "finetune/sft.py", *run_args, "--output_dir", str(out)]
    result = subprocess.run(
        [*resume, "--resume_from_checkpoint", "True"],
        cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"skipping damaged checkpoint {checkpoint}: global_step{step}/{shard.name} is truncated" in output
    assert f"resuming from {fallback}" in output
    assert "Traceback" not in output
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, MAX_STEPS + 1))
    # The steps redone after the fallback are the ones the preempted run took: nothing lost but time.
    assert {s: resumed[s] for s in preempted_losses} == preempted_losses
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.distributed
def test_finetune_launch_passes_sigterm_to_the_ranks_and_exits_75(run_args, workdir):
    out, log = workdir / "launch", workdir / "launch.log"
    hostfile = workdir / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    launch = [
        sys.executable,
        "-m",
        "finetune.launch",
        "--hostfile",
        str(hostfile),
        "--no_ssh",
        "--node_rank",
        "0",
    ]
    launch += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--", "finetune/sft.py"]
    process = start([*launch, *run_args, "--output_dir", str(out)], log)
    wait_for(lambda: (out / "checkpoint-2").is_dir(), process, log)
    process.send_signal(
        signal.SIGTERM
    )  # to the launcher only, as a scheduler's kill of the job's main process
    assert process.wait(timeout=TIMEOUT_S) == exits.PREEMPTED, log.read_text()[-3000:]
    wait_until_no_process_runs(out)
    output = log.read_text()
    step = stopped_step(output)
    assert checkpoint_problem(out / f"checkpoint-{step}", world_size=2) is None
    assert "Traceback" not in output
