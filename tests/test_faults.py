"""Faults and bad inputs as a demanding user meets them, checked by what the user sees: the exit status, the
one `error:` line, and that no work is lost or mixed (finetune/sft.py in-process, one CPU process, a tiny
Baichuan2-7B).

- a diverging run stops at the first NaN with exit 3 naming the step and the last good checkpoint, never
  saving non-finite weights; NaN is logged as NaN;
- an output directory holding another run is refused (or cleared with --overwrite_output_dir), and a resume
  into a different run's directory is refused naming the difference;
- resume skips a damaged newest checkpoint (each kind of damage a kill or a full disk leaves) and ends with
  the uninterrupted run's weights; --resume_from_checkpoint True with no checkpoint starts fresh;
- a save that fails (disk full) exits 1 naming the path and leaves no half checkpoint and no finished-looking
  directory; a loss curve that cannot be written never stops a run;
- data that leaves nothing to train on, an eval set emptied by drops, and --val_size larger than the data
  each stop before the weights load with one line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune import exits
from finetune.checkpoints import newest_intact_checkpoint
from finetune.finite import DivergenceMonitor, first_nonfinite

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model_max_length", "128", "--report_to", "none", "--disable_tqdm", "True", "--seed", "0"]
TINY += ["--logging_steps", "1", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture
def run_sft(capsys, monkeypatch, caplog):
    """finetune/sft.py in this process: run(*args) -> (exit status, its `error:` lines, everything it printed
    and logged)."""
    from accelerate.state import AcceleratorState

    from finetune import sft as entry

    monkeypatch.chdir(ROOT)
    caplog.set_level(logging.INFO)

    def run(*args) -> tuple[int, list[str], str]:
        capsys.readouterr()
        caplog.clear()
        try:
            status = entry.main([*TINY, *map(str, args)])
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        out = capsys.readouterr()
        errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
        return status, errors, out.out + out.err + caplog.text

    return run


def digest(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_run(tiny7b, chat_data, workdir):
    """A finished full fine-tune of 2 steps with checkpoint-1 and checkpoint-2: the reference for resumes and
    the 'earlier run' that output-directory checks must protect."""
    from accelerate.state import AcceleratorState

    from finetune import sft as entry

    out = workdir / "full"
    argv = [*TINY, "--model_name_or_path", tiny7b, "--data_path", chat_data, "--output_dir", out]
    argv += ["--max_steps", 2, "--save_strategy", "steps", "--save_steps", 1]
    try:
        assert entry.main(list(map(str, argv))) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return out


def run_args(tiny7b, chat_data, out, *extra):
    return ["--model_name_or_path", tiny7b, "--data_path", chat_data, "--output_dir", out, *extra]


# ---------------------------------------------------------------- NaN / divergence


def test_nan_stops_at_its_step_and_saves_nothing_from_it(tiny7b, chat_data, workdir, run_sft, monkeypatch):
    """lr 1e20 without clipping: step 1 is finite (weights ~1e20), step 2's loss is NaN. The run stops there
    with exit 3, the log shows the NaN as NaN, checkpoint-1 (finite) is named, and nothing of step 2 is
    written: no checkpoint-2, no final model, no trainer state that looks finished."""
    out = workdir / "nan"
    args = run_args(
        tiny7b, chat_data, out, "--learning_rate", "1e20", "--max_grad_norm", "0", "--max_steps", 6
    )
    status, errors, output = run_sft(*args, "--save_strategy", "steps", "--save_steps", 1)
    assert status == exits.DIVERGED, output[-3000:]
    assert len(errors) == 1 and "step 2:" in errors[0] and "not finite" in errors[0], errors
    assert f"last good checkpoint: {out / 'checkpoint-1'}" in errors[0]
    assert "'loss': 'nan'" in output  # not the Trainer's default '0'
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert first_nonfinite(load_file(out / "checkpoint-1" / "model.safetensors").items()) is None
    assert not (out / "model.safetensors").exists() and not (out / "trainer_state.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"


def test_non_finite_weights_are_never_saved_as_the_final_model(tiny7b, chat_data, workdir, run_sft):
    """lr inf: step 1's loss and gradient norm are finite (computed before the update), the weights after it
    are not. The final save refuses them naming a tensor; nothing that looks finished is written."""
    out = workdir / "inf-weights"
    args = run_args(
        tiny7b, chat_data, out, "--learning_rate", "inf", "--max_steps", 1, "--save_strategy", "no"
    )
    status, errors, output = run_sft(*args)
    assert status == exits.DIVERGED, output[-3000:]
    assert (
        len(errors) == 1 and "step 1: tensor " in errors[0] and "the final model was not written" in errors[0]
    )
    assert not (out / "model.safetensors").exists() and not (out / "trainer_state.json").exists()


@pytest.mark.parametrize(
    ("losses", "grad_norms", "warn_at"),
    [
        # lr 1e3 on the tiny model: a jump to thousands, then stuck with dead gradients (measured).
        ([8.7, 3315, 2417, 78.7, 8.3, 8.3, 8.3], [6.6, 1.6e11, 7.1e12, 1.3e12, 0, 0, 0], [4, 7]),
        ([3.0, 2.8, 2.9, 2.7, 2.6, 2.65, 2.5], [1.0] * 7, []),  # healthy noise never warns
        ([3.0, 2.8, 7.0, 2.7, 7.0, 2.6, 2.5], [1.0] * 7, []),  # isolated spikes are not a trend
    ],
)
def test_divergence_warns_once_per_episode(losses, grad_norms, warn_at):
    monitor = DivergenceMonitor()
    warned = [
        step
        for step, (loss, norm) in enumerate(zip(losses, grad_norms), 1)
        if monitor.update(step, loss, norm)
    ]
    assert warned == warn_at


# ---------------------------------------------------------------- output directories


def test_output_dir_of_another_run_is_refused_unchanged(full_run, tiny7b, chat_data, workdir, run_sft):
    before = digest(full_run)
    other_data = workdir / "other.json"
    other_data.write_text(json.dumps(json.loads(chat_data.read_text())[:8], ensure_ascii=False))
    cases = [
        ((), "already holds a run's outputs"),
        (("--use_lora", "True", "--save_total_limit", "1"), "already holds a run's outputs"),
        (("--use_lora", "True", "--resume_from_checkpoint", "True"), "it is a full run, this one is lora"),
        (("--resume_from_checkpoint", "True", "--data_path", other_data), "its data differs"),
    ]
    for extra, problem in cases:
        status, errors, output = run_sft(*run_args(tiny7b, chat_data, full_run), *extra)
        assert status == exits.BAD_INPUT, output[-2000:]
        assert len(errors) == 1 and problem in errors[0] and str(full_run) in errors[0], errors
        assert "Traceback" not in output
        assert digest(full_run) == before  # nothing written, nothing deleted


def test_overwrite_output_dir_deletes_the_earlier_run_first(full_run, tiny7b, chat_data, workdir, run_sft):
    out = workdir / "overwritten"
    shutil.copytree(full_run, out)
    (out / "notes.txt").write_text("mine")  # not a run output: kept
    args = run_args(
        tiny7b, chat_data, out, "--use_lora", "True", "--max_steps", 1, "--overwrite_output_dir", "True"
    )
    status, _, output = run_sft(*args)
    assert status == 0, output[-3000:]
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint-2").exists()
    assert (out / "adapter_model.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["mode"] == "lora" and manifest["status"] == "complete"


def test_resume_true_without_checkpoints_starts_fresh(tiny7b, chat_data, workdir, run_sft, monkeypatch):
    """One command line for the first start and every requeue."""
    out = workdir / "fresh"
    args = run_args(
        tiny7b, chat_data, out, "--use_lora", "True", "--max_steps", 1, "--resume_from_checkpoint", "True"
    )
    status, _, output = run_sft(*args)
    assert status == 0, output[-3000:]
    assert "no checkpoint in" in output and "starting from the beginning" in output
    assert (out / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- damaged checkpoints


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated weights": (lambda c: truncate(c / "model.safetensors"), "model.safetensors is truncated"),
    "truncated optimizer": (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt is truncated"),
    "truncated rng state": (lambda c: truncate(c / "rng_state.pth"), "rng_state.pth is truncated"),
    "empty scheduler": (lambda c: (c / "scheduler.pt").write_bytes(b""), "scheduler.pt is empty"),
    "no trainer state": (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
    "cut trainer state": (
        lambda c: truncate(c / "trainer_state.json"),
        "trainer_state.json is not valid JSON",
    ),
    "empty directory": (lambda c: [p.unlink() for p in c.iterdir()], "empty directory"),
    "no optimizer": (lambda c: (c / "optimizer.pt").unlink(), "no optimizer.pt"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_newest_checkpoint_is_skipped_naming_the_problem(full_run, tmp_path, kind):
    damage, problem = DAMAGE[kind]
    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    damage(out / "checkpoint-2")
    checkpoint, skipped = newest_intact_checkpoint(out, world_size=1)
    assert checkpoint == out / "checkpoint-1"
    assert (
        len(skipped) == 1 and skipped[0].startswith(f"{out / 'checkpoint-2'}: ") and problem in skipped[0]
    ), skipped


def test_resume_past_a_damaged_checkpoint_loses_nothing(full_run, tiny7b, chat_data, workdir, run_sft):
    """The run's newest checkpoint cut in half by a kill: resuming falls back to checkpoint-1, redoes step 2
    and ends with exactly the uninterrupted run's weights and losses."""
    out = workdir / "resumed"
    shutil.copytree(full_run, out)
    for name in ("model.safetensors", "trainer_state.json"):
        (out / name).unlink()
    truncate(out / "checkpoint-2" / "optimizer.pt")
    args = run_args(tiny7b, chat_data, out, "--max_steps", 2, "--save_strategy", "steps", "--save_steps", 1)
    status, _, output = run_sft(*args, "--resume_from_checkpoint", "True")
    assert status == 0, output[-3000:]
    assert "skipping damaged checkpoint" in output and "optimizer.pt is truncated" in output
    assert f"resuming from {out / 'checkpoint-1'}" in output
    resumed, reference = load_file(out / "model.safetensors"), load_file(full_run / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)  # same ops in the same order on CPU
    history = [json.loads((d / "trainer_state.json").read_text())["log_history"] for d in (out, full_run)]
    assert [r["loss"] for r in history[0] if "loss" in r] == [r["loss"] for r in history[1] if "loss" in r]
    assert newest_intact_checkpoint(out, 1)[0] == out / "checkpoint-2"  # the damaged one was replaced


# ---------------------------------------------------------------- full disk


def disk_full(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def fail_checkpoint_2(monkeypatch):
    from finetune.trainer import SFTTrainer

    original = SFTTrainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        if self.state.global_step == 2:
            disk_full(Path(output_dir) / "optimizer.pt")
        original(self, output_dir)

    monkeypatch.setattr(SFTTrainer, "_save_optimizer_and_scheduler", save)


def fail_final_model(monkeypatch):
    from finetune.trainer import SFTTrainer

    original = SFTTrainer._save

    def save(self, output_dir=None, state_dict=None):
        if Path(output_dir).name == ".staging-final":
            disk_full(Path(output_dir) / "model.safetensors")
        original(self, output_dir, state_dict)

    monkeypatch.setattr(SFTTrainer, "_save", save)


def fail_loss_curve(monkeypatch):
    monkeypatch.setattr("finetune.callbacks.plot_loss_curve", lambda history, path: disk_full(path))


@pytest.mark.parametrize(
    ("fault", "status", "named", "checkpoints", "finished"),
    [
        (
            fail_checkpoint_2,
            exits.FAILED,
            "checkpoint-2 failed: [Errno 28] No space left",
            ["checkpoint-1"],
            False,
        ),
        (
            fail_final_model,
            exits.FAILED,
            "saving the final model into",
            ["checkpoint-1", "checkpoint-2"],
            False,
        ),
        (fail_loss_curve, exits.OK, None, ["checkpoint-1", "checkpoint-2"], True),
    ],
)
def test_a_full_disk_loses_no_earlier_work(
    fault, status, named, checkpoints, finished, tiny7b, chat_data, tmp_path, run_sft, monkeypatch
):
    out = tmp_path / "run"
    fault(monkeypatch)
    args = run_args(tiny7b, chat_data, out, "--max_steps", 2, "--save_strategy", "steps", "--save_steps", 1)
    code, errors, output = run_sft(*args)
    assert code == status, output[-3000:]
    if named:
        assert len(errors) == 1 and named in errors[0] and str(out) in errors[0], errors
    else:
        assert not errors and "loss curve not written to" in output
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints
    assert not list(out.glob(".staging-*"))  # no half-written save left behind
    assert newest_intact_checkpoint(out, 1)[1] == []  # what is left is whole
    assert (out / "trainer_state.json").exists() == finished == (out / "model.safetensors").exists()


# ---------------------------------------------------------------- data that leaves nothing to train on


def test_data_edge_cases_stop_before_the_weights_load(tiny7b, chat_data, workdir, run_sft, monkeypatch):
    from finetune import sft as entry

    def no_weights(*args):
        pytest.fail("the weights loaded before the data was checked")

    monkeypatch.setattr(entry, "load_model_for_training", no_weights)
    long_eval = workdir / "long_eval.json"  # a prompt longer than model_max_length leaves no reply to train
    turns = [{"from": "human", "value": "长" * 400}, {"from": "gpt", "value": "好"}]
    long_eval.write_text(json.dumps([{"id": "e1", "conversations": turns}]), encoding="utf-8")
    cases = [
        (("--model_max_length", 2), "no sample left to train on: 16 record(s) read, all dropped"),
        (("--eval_data_path", long_eval), "long_eval.json: no sample left to train on: 1 record(s) read"),
        (("--val_size", 16), "--val_size: 16 holds back 16 of the 16 training samples"),
    ]
    for i, (extra, problem) in enumerate(cases):
        status, errors, output = run_sft(*run_args(tiny7b, chat_data, workdir / f"edge{i}"), *extra)
        assert status == exits.BAD_INPUT, output[-2000:]
        assert len(errors) == 1 and problem in errors[0], errors


def test_eval_set_drops_are_reported(tiny7b, chat_data, workdir, run_sft, monkeypatch):
    """Eval data gets the training data's report: in the log and in data_report.json."""
    bad = dict(json.loads(chat_data.read_text())[0], id="broken")
    bad["conversations"] = [{"from": "robot", "value": "x"}]
    evals = workdir / "evals.json"
    evals.write_text(
        json.dumps([*json.loads(chat_data.read_text())[:3], bad], ensure_ascii=False), encoding="utf-8"
    )
    out = workdir / "with-eval"
    args = run_args(tiny7b, chat_data, out, "--use_lora", "True", "--max_steps", 1, "--eval_data_path", evals)
    status, _, output = run_sft(*args, "--skip_invalid", "True")
    assert status == 0, output[-3000:]
    report = json.loads((out / "eval_data_report.json").read_text())
    assert (
        report["records_read"] == 4
        and report["samples_kept"] == 3
        and report["dropped"] == {"unknown role": 1}
    )
    assert "eval data (--eval_data_path)" in output


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_saves_a_checkpoint_without_a_traceback(tiny7b, chat_data, workdir):
    """SIGINT, as a terminal's Ctrl-C sends it: the step finishes, a checkpoint is saved, exit 75, no
    traceback; the run.json says preempted."""
    out = workdir / "ctrl-c"
    command = [sys.executable, "finetune/sft.py", *TINY, *map(str, run_args(tiny7b, chat_data, out))]
    command += ["--use_lora", "True", "--max_steps", "200", "--save_steps", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # sft.py puts its own repository first
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-2").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == exits.PREEMPTED, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    line = next(line for line in output.splitlines() if "stopped by SIGINT at step" in line)
    step = int(line.split("at step ")[1].split(":")[0])
    assert step < 200 and (out / f"checkpoint-{step}" / "adapter_model.safetensors").is_file()
    assert newest_intact_checkpoint(out, 1) == (out / f"checkpoint-{step}", [])
    assert json.loads((out / "run.json").read_text())["status"] == "preempted"
    assert not (out / "adapter_model.safetensors").exists()  # not finished, and does not look it
