"""Other tools' command lines: FastChat's train.py flags (the Ascend guide's command) translated with a log
line each, --fsdp on CPU dropped loudly, torchrun on CPU ranks really data parallel, and a WORLD_SIZE without a
process group refused."""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.args import parse_args
from finetune.distributed import cpu_launch_env
from finetune.foreign_flags import ForeignFlagError, check_world_size, translate_foreign_flags
from finetune.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# FastChat's train.py flags as the Ascend guide gives them (sizes aside): every one must run here unchanged.
FASTCHAT = (
    "--bf16 True --num_train_epochs 1 --per_device_train_batch_size 1 --per_device_eval_batch_size 1 "
    "--gradient_accumulation_steps 1 --evaluation_strategy no --save_strategy steps --save_steps 1200 "
    "--save_total_limit 10 --learning_rate 2e-5 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine "
    "--logging_steps 1 --fsdp full_shard_auto_wrap --fsdp_transformer_layer_cls_to_wrap DecoderLayer "
    "--tf32 True --model_max_length 128 --gradient_checkpointing True --lazy_preprocess True --report_to none"
).split()
FASTCHAT[FASTCHAT.index("full_shard_auto_wrap")] = "full_shard auto_wrap"


@pytest.fixture(autouse=True)
def fresh_process_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def test_fastchat_flags_are_translated_with_a_line_each(caplog):
    argv = translate_foreign_flags(["--data_path", "a.json", *FASTCHAT])
    err = caplog.text
    assert "--evaluation_strategy no → --eval_strategy no" in err
    assert "--lazy_preprocess True accepted and ignored" in err
    assert "DecoderLayer is the official 7B name of the native model's BaichuanLayer" in err
    assert "--lazy_preprocess" not in argv and "--evaluation_strategy" not in argv
    assert json.loads(argv[argv.index("--fsdp_config") + 1]) == {
        "transformer_layer_cls_to_wrap": ["BaichuanLayer"]
    }
    merged = translate_foreign_flags(
        ["--fsdp_config", '{"cpu_offload": true}', "--fsdp_transformer_layer_cls_to_wrap=BaichuanLayer"]
    )
    assert merged == [
        "--fsdp_config",
        json.dumps({"cpu_offload": True, "transformer_layer_cls_to_wrap": ["BaichuanLayer"]}),
    ]
    with pytest.raises(ForeignFlagError, match="put transformer_layer_cls_to_wrap in that file"):
        translate_foreign_flags(["--fsdp_config", "fsdp.json", "--fsdp_transformer_layer_cls_to_wrap", "X"])


def test_fastchat_command_parses_and_fsdp_is_dropped_loudly_on_cpu(caplog):
    *_, train = parse_args(["--data_path", "a.json", "--output_dir", "out", *FASTCHAT])
    assert train.eval_strategy == "no" and train.lr_scheduler_type == "cosine"
    assert not train.fsdp and not train.fsdp_plugin_args
    assert "FSDP shards over accelerators and this host has none; dropped" in caplog.text


def test_world_size_without_a_process_group_never_trains(monkeypatch):
    *_, train = parse_args(["--data_path", "a.json"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ForeignFlagError) as error:
        check_world_size(train)
    assert "WORLD_SIZE=2" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.distributed
def test_fastchat_command_under_torchrun_is_data_parallel_on_two_cpu_ranks(tmp_path):
    """torchrun's 2 ranks share the data: one epoch of N packed rows takes N/2 steps, logged as 2 ranks, and
    one model is written."""
    model = write_tiny_checkpoint(tmp_path / "tiny-7b", arch="7b")
    records = json.loads((ROOT / "data" / "sample_chat.json").read_text(encoding="utf-8"))[:16]
    data = tmp_path / "chat.json"
    data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "finetune/sft.py",
        "--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(out),
        "--disable_tqdm", "True", *FASTCHAT,
    ]  # fmt: skip
    env = {**os.environ, **cpu_launch_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "2 CPU ranks (torchrun): --use_cpu True" in log
    assert "x 2 ranks" in log and "x 1 ranks" not in log
    rows = int(re.search(r"data \((\d+) rows, packed\)", log).group(1))
    state = json.loads((out / "trainer_state.json").read_text())
    assert rows >= 2 and state["global_step"] == math.ceil(rows / 2)  # one rank alone would take `rows` steps
    assert (out / "model.safetensors").is_file() and (out / "modeling_baichuan.py").is_file()
