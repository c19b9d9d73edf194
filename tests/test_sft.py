"""finetune/sft.py end to end, through the real launcher: `deepspeed --num_gpus 2` on two CPU ranks (gloo),
a few steps on tiny 7B (RoPE) and 13B (ALiBi) checkpoints.

Each test is one property: a ZeRO-3 full run is a drop-in replacement for its base; the loss is the token
mean of the global batch whatever the split into micro-batches, accumulation steps and ranks; LoRA (ZeRO-2
and ZeRO-3) and QLoRA adapters reload, trained, with the base untouched; a run killed with SIGKILL right
after a checkpoint resumes to the same weights; bad data stops before training with one line.
"""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, free_port
from safetensors.torch import load_file

from finetune.distributed import cpu_launch_env
from finetune.models.baichuan.portable import DIRECTORY as PORTABLE_DIR
from finetune.models.baichuan.portable import REMOTE_CODE_FILES

DEEPSPEED = Path(sys.executable).with_name("deepspeed")
RUN_TIMEOUT_S = 300

# A few steps at a learning rate that moves a tiny model visibly; packed rows of 128 tokens.
COMMON = (
    "--model_max_length 128 --logging_steps 1 --report_to none --learning_rate 1e-3 "
    "--disable_tqdm True --save_strategy no --seed 0"
).split()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("sft")


@pytest.fixture(scope="session")
def tiny13b_remote(tiny13b, workdir):
    """The tiny 13B as an official download is: with its remote code (a stand-in here)."""
    path = Path(shutil.copytree(tiny13b, workdir / "tiny-13b-remote"))
    # An official download carries its remote code; a full fine-tune ships the portable files instead.
    (path / "modeling_baichuan.py").write_text("# stand-in for the official remote code\n")
    return path


def launcher_env() -> dict[str, str]:
    env = {**os.environ, **cpu_launch_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def sft_command(*args, ranks: int = 2, port: int | None = None) -> list[str]:
    launcher = [str(DEEPSPEED), "--num_gpus", str(ranks), "--master_port", str(port or free_port())]
    return [*launcher, "finetune/sft.py", *COMMON, *map(str, args)]


def launch(*args, ranks: int = 2) -> subprocess.CompletedProcess:
    port = free_port()
    result = subprocess.run(
        sft_command(*args, ranks=ranks, port=port),
        cwd=ROOT,
        env=launcher_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    # DeepSpeed's CPU ranks never unlink their shared-memory allreduce buffers (66 MB each, in RAM); sft.py
    # does once every rank has mapped them, so no run, failed ones included, leaves any behind.
    left = sorted(p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert not left, f"left in /dev/shm: {left}"
    return result


def run_sft(*args, ranks: int = 2) -> subprocess.CompletedProcess:
    result = launch(*args, ranks=ranks)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def base_state_dict(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in path.glob("pytorch_model*.bin"):
        tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    return tensors


def assert_trained_adapter(output_dir: Path, base_dir: Path, targets: set[str]) -> None:
    """The adapter holds only LoRA tensors, for exactly the target modules of every layer, none empty, and
    training moved it: lora_B starts at zero. It reloads onto the untouched base and changes its outputs."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    import finetune  # noqa: F401

    adapter = load_file(output_dir / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter} == targets
    assert all(t.numel() > 0 for t in adapter.values())
    assert all(t.abs().max() > 0 for k, t in adapter.items() if ".lora_B." in k)

    model = AutoPeftModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    reloaded_base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in model.state_dict().items()
    }
    assert all(torch.equal(reloaded_base[k], v) for k, v in base.state_dict().items())
    ids = torch.tensor([[195, 300, 301, 302, 196, 400, 401]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits)


@pytest.mark.distributed
def test_zero3_full_is_a_drop_in_replacement_and_accumulation_invariant(tiny13b_remote, chat_data, workdir):
    """ZeRO-3 full fine-tuning, run as micro-batch 4 x accumulation 1 and as 1 x 4 on two ranks: each step
    sees the same 8 rows, split differently over ranks and micro-batches, so only an exact global token
    mean (num_items_in_batch counted over accumulation and ranks) gives the same losses and weights."""
    runs = {}
    for micro, accumulation in ((4, 1), (1, 4)):
        out = workdir / f"full-z3-{micro}x{accumulation}"
        run_sft(
            "--model_name_or_path", tiny13b_remote, "--data_path", chat_data, "--output_dir", out,
            "--deepspeed", "ds_configs/zero3.json", "--max_steps", 3,
            "--per_device_train_batch_size", micro, "--gradient_accumulation_steps", accumulation,
        )  # fmt: skip
        runs[micro, accumulation] = out
    a, b = runs[4, 1], runs[1, 4]
    assert logged_losses(a) == pytest.approx(logged_losses(b), rel=1e-5)
    assert len(logged_losses(a)) == 3
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.allclose(weights_a[k], weights_b[k], atol=1e-4) for k in weights_a)

    # The output is the base's layout: same tensor names and shapes, nothing empty, everything trained.
    base = base_state_dict(tiny13b_remote)
    assert sorted(weights_a) == sorted(base)
    assert all(weights_a[k].shape == v.shape and weights_a[k].numel() for k, v in base.items())
    assert all(not torch.equal(weights_a[k], v) for k, v in base.items())
    config, base_config = (json.loads((d / "config.json").read_text()) for d in (a, tiny13b_remote))
    assert config["auto_map"] == base_config["auto_map"] and config["use_cache"] is True
    base_files = digest(tiny13b_remote)
    for name in ("tokenizer.model", "generation_config.json"):
        assert digest(a)[name] == base_files[name], name
    # The tokenizer files are the base's, with the special tokens marked and a chat template added.
    tokenizer_config, base_tokenizer_config = (
        json.loads((d / "tokenizer_config.json").read_text()) for d in (a, tiny13b_remote)
    )
    assert {k: v for k, v in tokenizer_config.items() if k in base_tokenizer_config} == base_tokenizer_config
    assert "chat_template" in tokenizer_config
    # Remote code: the portable files, not the base's (the official ones fail on transformers 5).
    for name in REMOTE_CODE_FILES:
        assert (a / name).read_bytes() == (PORTABLE_DIR / name).read_bytes(), name
    assert (a / "loss_curve.png").stat().st_size > 0 and (a / "data_report.json").is_file()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import finetune  # noqa: F401

    reloaded = AutoModelForCausalLM.from_pretrained(a)  # strict: any missing or extra tensor is an error
    assert torch.equal(reloaded.state_dict()["lm_head.weight"], weights_a["lm_head.weight"])
    assert AutoTokenizer.from_pretrained(a).encode("你好") == AutoTokenizer.from_pretrained(
        tiny13b_remote
    ).encode("你好")


@pytest.mark.distributed
def test_zero2_lora_resumes_exactly_after_sigkill(tiny7b, chat_data, workdir):
    """The official adapter (W_pack, r=1, alpha 32, dropout 0.1) with gradient checkpointing under ZeRO-2.
    A run killed with SIGKILL right after its step-2 checkpoint, resumed with --resume_from_checkpoint True,
    ends with the uninterrupted run's losses and adapter, dropout randomness included."""
    base_before = digest(tiny7b)
    args = (
        "--model_name_or_path", tiny7b, "--data_path", chat_data, "--use_lora", "True",
        "--gradient_checkpointing", "True", "--deepspeed", "ds_configs/zero2.json", "--max_steps", 6,
        "--per_device_train_batch_size", 2, "--save_strategy", "steps", "--save_steps", 2,
    )  # fmt: skip
    reference = workdir / "lora-z2-reference"
    result = run_sft(*args, "--output_dir", reference)
    assert "tokens_per_second" in result.stdout and "supervised_tokens_per_second" in result.stdout

    killed = workdir / "lora-z2-killed"
    with open(workdir / "killed.log", "w") as log:
        process = subprocess.Popen(
            sft_command(*args, "--output_dir", killed),
            cwd=ROOT, env=launcher_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # trainer_state.json is the last file a checkpoint writes.
        while not (killed / "checkpoint-2" / "trainer_state.json").exists():
            assert process.poll() is None, (workdir / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (killed / "adapter_model.safetensors").exists()

    run_sft(*args, "--output_dir", killed, "--resume_from_checkpoint", "True")
    assert logged_losses(killed) == logged_losses(reference)
    resumed, uninterrupted = (load_file(d / "adapter_model.safetensors") for d in (killed, reference))
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-6, rtol=0) for k in uninterrupted)

    assert_trained_adapter(reference, tiny7b, targets={"W_pack"})
    config = json.loads((reference / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (1, 32, 0.1)
    assert digest(tiny7b) == base_before  # LoRA left the base files untouched


@pytest.mark.distributed
def test_zero3_lora_saves_the_whole_trained_adapter(tiny13b, chat_data, workdir):
    """Under ZeRO-3 every rank holds a shard of each tensor; the saved adapter must still be complete."""
    out = workdir / "lora-z3"
    run_sft(
        "--model_name_or_path", tiny13b, "--data_path", chat_data, "--output_dir", out, "--use_lora", "True",
        "--lora_r", 4, "--lora_target_modules", "W_pack", "o_proj", "--deepspeed", "ds_configs/zero3.json",
        "--max_steps", 2, "--per_device_train_batch_size", 2,
    )  # fmt: skip
    adapter = load_file(out / "adapter_model.safetensors")
    hidden = json.loads((tiny13b / "config.json").read_text())["hidden_size"]
    assert adapter["base_model.model.model.layers.0.self_attn.W_pack.lora_A.weight"].shape == (4, hidden)
    assert adapter["base_model.model.model.layers.0.self_attn.W_pack.lora_B.weight"].shape == (3 * hidden, 4)
    assert_trained_adapter(out, tiny13b, targets={"W_pack", "o_proj"})


@pytest.mark.distributed
def test_qlora_zero2_trains_an_adapter_on_a_4bit_base(tiny7b, chat_data, workdir):
    out = workdir / "qlora-z2"
    run_sft(
        "--model_name_or_path", tiny7b, "--data_path", chat_data, "--output_dir", out, "--q_lora", "True",
        "--lora_r", 4, "--lora_target_modules", "all-linear", "--bf16", "True", "--gradient_checkpointing", "True",
        "--deepspeed", "ds_configs/zero2.json", "--max_steps", 2, "--per_device_train_batch_size", 2,
    )  # fmt: skip
    assert_trained_adapter(out, tiny7b, targets={"W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"})


def test_bad_data_stops_before_training_with_one_line(tiny7b, workdir, capsys, monkeypatch, in_repo_root):
    from finetune import sft

    bad = workdir / "bad.json"
    bad.write_text(json.dumps([{"id": "1", "conversations": [{"from": "human", "value": 3}]}]))
    out = workdir / "bad-run"
    argv = ["--model_name_or_path", str(tiny7b), "--data_path", str(bad), "--output_dir", str(out)]

    def no_weights(*args):
        pytest.fail("the weights loaded before the data was checked")

    monkeypatch.setattr(sft, "load_model_for_training", no_weights)
    assert sft.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "bad.json, record 0" in error
    assert not (out / "trainer_state.json").exists()


@pytest.mark.distributed
def test_bad_data_under_the_launcher_exits_2_on_every_rank(tiny7b, workdir):
    # Both ranks meet the error with a process group up (ZeRO on CPU starts it at argument parsing); each must
    # exit with status 2 and one line, not abort while the group is torn down at interpreter exit.
    bad = workdir / "bad-ranks.json"
    bad.write_text(json.dumps([{"id": "7", "conversations": [{"from": "human", "value": 3}]}]))
    args = ["--model_name_or_path", tiny7b, "--data_path", bad, "--output_dir", workdir / "bad-ranks"]
    result = launch(*args, "--deepspeed", "ds_configs/zero2.json")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors and all("bad-ranks.json, record 0" in line for line in errors), output[-3000:]
    assert "Traceback" not in output and "terminate called" not in output


def test_token_counts_and_model_flops():
    from finetune.trainer import batch_token_counts, count_parameters, training_flops_per_token

    batch = {
        "input_ids": torch.tensor([[195, 5, 196, 6, 2, 0], [195, 7, 196, 8, 9, 2]]),
        "labels": torch.tensor([[2, -100, -100, 6, 2, -100], [-100, -100, -100, 8, 9, 2]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
    }
    # Real tokens from the mask; supervised = labels the shifted loss uses (a row's first label is none).
    assert batch_token_counts(batch) == (11, 5)

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3, bias=False))
    model.get_input_embeddings = lambda: model[0]
    assert count_parameters(model) == (52, 52)
    assert training_flops_per_token(model) == 6 * 12  # embeddings cost no FLOPs
    model[1].weight.requires_grad_(False)
    model[0].weight.requires_grad_(False)
    assert training_flops_per_token(model) == 4 * 12  # frozen base: no weight gradients


def test_loss_curve_png(tmp_path):
    from finetune.callbacks import plot_loss_curve

    history = [{"loss": 3.0 - 0.1 * s, "step": s} for s in range(1, 6)] + [{"eval_loss": 2.9, "step": 5}]
    assert plot_loss_curve(history, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_loss_curve([{"train_runtime": 1.0, "step": 5}], tmp_path / "none.png")


def test_val_size_evaluates_and_plots_eval_loss(tiny7b, chat_data, workdir, in_repo_root):
    """--val_size alone (no --eval_strategy): the held-out split is evaluated when checkpoints are saved, and
    eval loss and perplexity reach the log and the loss curve."""
    from finetune import sft

    out = workdir / "val-run"
    argv = [
        "--model_name_or_path", str(tiny7b), "--data_path", str(chat_data), "--output_dir", str(out),
        "--val_size", "4", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
        "--per_device_train_batch_size", "2", "--model_max_length", "256", "--report_to", "none",
        "--use_lora", "True", "--learning_rate", "1e-3",
    ]  # fmt: skip
    assert sft.main(argv) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [1, 2]
    for h in evals:
        assert h["eval_perplexity"] == pytest.approx(math.exp(h["eval_loss"]), rel=1e-3)
    assert (out / "loss_curve.png").stat().st_size > 0


def test_torch_compile_trains_like_eager_and_saves_plain_names(tiny13b, chat_data, workdir, monkeypatch):
    """--torch_compile True: the decoder layers compile in place (the Trainer does not wrap the model), two
    steps of different row lengths train to the eager run's weights, and the checkpoint keeps its names."""
    from accelerate.state import AcceleratorState

    from finetune import sft

    monkeypatch.chdir(ROOT)
    weights, losses = {}, {}
    for compiled in (False, True):
        out = workdir / f"compile-{compiled}"
        # Plain SGD, not Adam: Adam divides by the root of the squared gradient, so a coordinate whose gradient
        # is near zero moves by up to lr either way on a last-bit difference between compiled and eager kernels,
        # and which way depends on the CPU's instruction set. SGD moves each weight by lr x gradient (clipped to
        # norm 1, so no entry above 1): kernel-order differences (fp32 sums reordered by fusion, ~1e-6 of a
        # gradient) reach the weights as ~1e-7 at lr 0.1, while the steps move them by over 1e-3.
        argv = [
            "--model_name_or_path", str(tiny13b), "--data_path", str(chat_data), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--packing", "False", "--optim", "sgd",
            "--torch_compile", str(compiled), *COMMON, "--learning_rate", "0.1",
        ]  # fmt: skip
        try:
            assert sft.main(argv) == 0
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        weights[compiled] = load_file(out / "model.safetensors")
        losses[compiled] = logged_losses(out)
    assert weights[True].keys() == weights[False].keys()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    base = base_state_dict(tiny13b)
    moved = max((weights[False][name] - base[name]).abs().max().item() for name in base)
    assert moved > 1e-3  # the steps move weights by three orders of magnitude more than the tolerance
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights[True][name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend, width", [("flex_attention", 64), ("sdpa", 3), ("flash_attention_2", 3)])
def test_flex_attention_batches_have_one_fixed_width(backend, width):
    from types import SimpleNamespace

    from finetune.training_data import make_collator

    collator = make_collator(SimpleNamespace(pad_token_id=0), SimpleNamespace(model_max_length=64), backend)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].shape == (2, width) and int(batch["attention_mask"].sum()) == 4


@pytest.mark.distributed
def test_other_ranks_map_the_data_cache_and_tokenize_nothing(tiny7b, chat_data, workdir):
    """Two ranks and an empty data cache: rank 0 tokenizes and packs into it while rank 1 waits, then rank 1
    memory-maps both entries; its log (at --log_level_replica info) says so and has no tokenizing line."""
    result = run_sft(
        "--model_name_or_path", tiny7b, "--data_path", chat_data, "--output_dir", workdir / "ranks",
        "--max_steps", 1, "--per_device_train_batch_size", 1, "--data_cache_dir", workdir / "ranks-cache",
        "--log_level_replica", "info", "--use_lora", "True", "--deepspeed", "ds_configs/zero2.json",
    )  # fmt: skip
    lines = (result.stdout + result.stderr).splitlines()
    ours = {
        rank: [line for line in lines if f"[rank{rank}]" in line and " finetune." in line] for rank in (0, 1)
    }
    assert any("finetune.data.dataset: tokenizing 16 conversations" in line for line in ours[0]), ours
    assert any("packed 16 samples" in line and "cache miss" in line for line in ours[0]), ours
    assert any("tokenized samples: cache hit" in line for line in ours[1]), ours
    assert any("packed 16 samples" in line and "cache hit" in line for line in ours[1]), ours
    assert not any("tokenizing" in line or "cache miss" in line for line in ours[1]), ours
