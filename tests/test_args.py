"""The command line of finetune/sft.py: the official flags, --config YAML defaults under CLI overrides,
unknown keys, the LoRA flags as peft receives them, and device handling (CPU here, NPU mocked)."""

import sys
import types

import pytest
import torch
from transformers.utils import is_torch_tf32_available

from finetune import devices
from finetune.args import ConfigError, parse_args
from finetune.lora import lora_config

# The official README command (docs/BAICHUAN2.md, "The official command line"), paths aside.
OFFICIAL = (
    "--report_to none --data_path data/sample_chat.json --model_name_or_path output/tiny-7b "
    "--output_dir output/official --model_max_length 512 --num_train_epochs 4 --per_device_train_batch_size 16 "
    "--gradient_accumulation_steps 1 --save_strategy epoch --learning_rate 2e-5 --lr_scheduler_type constant "
    "--adam_beta1 0.9 --adam_beta2 0.98 --adam_epsilon 1e-8 --max_grad_norm 1.0 --weight_decay 1e-4 "
    "--warmup_ratio 0.0 --logging_steps 1 --gradient_checkpointing True --deepspeed ds_configs/zero3.json "
    "--bf16 True --tf32 True"
).split()


pytestmark = pytest.mark.usefixtures("in_repo_root")


def write_yaml(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_official_command_parses_with_official_meaning():
    model, data, lora, train = parse_args([*OFFICIAL, "--use_lora", "True"])
    assert model.model_name_or_path == "output/tiny-7b"
    assert model.attn_implementation == "auto"
    assert data.data_path == ["data/sample_chat.json"]
    assert (train.model_max_length, train.num_train_epochs, train.per_device_train_batch_size) == (512, 4, 16)
    assert (train.learning_rate, train.adam_beta1, train.adam_beta2, train.adam_epsilon) == (
        2e-5,
        0.9,
        0.98,
        1e-8,
    )
    assert (train.weight_decay, train.max_grad_norm, train.warmup_steps) == (1e-4, 1.0, 0.0)
    assert train.lr_scheduler_type == "constant" and train.save_strategy == "epoch"
    assert train.optim == "adamw_torch"  # the official override of the HF default
    assert train.activation_checkpointing is True  # transformers 5's name for --gradient_checkpointing
    assert train.bf16 is True  # accepted without a GPU
    # Kept on an Ampere-or-newer GPU; ignored (with a warning) elsewhere.
    assert train.tf32 is (True if is_torch_tf32_available() else None)
    assert train.use_lora is True and train.deepspeed == "ds_configs/zero3.json"
    assert train.hf_deepspeed_config.get_value("zero_optimization.stage") == 3
    assert (lora.lora_r, lora.lora_alpha, lora.lora_dropout, lora.lora_target_modules) == (
        1,
        32,
        0.1,
        ["W_pack"],
    )
    assert train.global_batch_size() == 16 * train.world_size
    assert train.max_tokens_per_step() == 16 * 512 * train.world_size


def test_warmup_ratio_becomes_a_fraction_of_steps():
    *_, train = parse_args(["--data_path", "d.json", "--warmup_ratio", "0.1"])
    assert train.warmup_steps == 0.1
    with pytest.raises(ConfigError, match="warmup_ratio"):
        parse_args(["--data_path", "d.json", "--warmup_ratio", "1.5"])


def test_yaml_gives_defaults_and_cli_wins(tmp_path):
    config = write_yaml(
        tmp_path / "run.yaml",
        "data_path: a.json\nlearning_rate: 1.0e-4\nlora_target_modules: [W_pack, o_proj]\n"
        "use_lora: true\nnum_train_epochs: 2\nmask: last_assistant\n",
    )
    model, data, lora, train = parse_args(["--config", config, "--learning_rate", "3e-4"])
    assert train.learning_rate == 3e-4  # CLI over YAML
    assert train.num_train_epochs == 2 and train.use_lora is True  # YAML over dataclass defaults
    assert data.data_path == ["a.json"]  # a scalar for a list flag
    assert data.mask == "last_assistant"
    assert lora.lora_target_modules == ["W_pack", "o_proj"]
    *_, train = parse_args(["--config", config, "--use_lora", "False"])
    assert train.use_lora is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data_path: a.json\nlerning_rate: 1.0e-4\n", "unknown key 'lerning_rate'"),
        ("- data_path\n", "expected a mapping"),
        ("data_path: [a.json\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, message):
    config = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as info:
        parse_args(["--config", config])
    assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file_and_unknown_flag(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_args(["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="unknown argument.*--lerning_rate"):
        parse_args(["--data_path", "a.json", "--lerning_rate", "1e-4"])


def test_qlora_with_zero3_stops_with_a_clear_message():
    with pytest.raises(ConfigError, match="ZeRO-3"):
        parse_args(["--data_path", "a.json", "--q_lora", "True", "--deepspeed", "ds_configs/zero3.json"])
    *_, lora, train = parse_args(
        ["--data_path", "a.json", "--q_lora", "True", "--deepspeed", "ds_configs/zero2.json"]
    )
    assert lora.q_lora and train.hf_deepspeed_config.get_value("zero_optimization.stage") == 2


def test_lora_flags_reach_peft():
    *_, lora, _ = parse_args(["--data_path", "a.json", "--use_lora", "True"])
    official = lora_config(lora)
    assert (official.r, official.lora_alpha, official.lora_dropout) == (1, 32, 0.1)
    assert set(official.target_modules) == {"W_pack"} and official.bias == "none"
    assert not official.use_dora and not official.use_rslora
    flags = (
        "--lora_r 8 --lora_alpha 16 --lora_dropout 0 --lora_target_modules all-linear --use_dora --use_rslora"
    )
    *_, lora, _ = parse_args(["--data_path", "a.json", *flags.split()])
    config = lora_config(lora)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.0)
    assert config.target_modules == "all-linear"  # peft's own spelling: a string, not a list
    assert config.use_dora and config.use_rslora


@pytest.mark.skipif(devices.has_accelerator(), reason="a CPU-only host's settings")
def test_cpu_host_settings():
    *_, train = parse_args(["--data_path", "a.json", "--bf16", "True"])
    assert devices.device_type() == "cpu" and train.device.type == "cpu"
    assert train.dataloader_pin_memory is False
    assert train.ddp_backend is None  # accelerate picks gloo
    assert devices.current_peak_flops() is None  # no MFU on CPU


def test_peak_flops_by_device_name():
    assert devices.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert devices.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert devices.peak_flops("Some Future Card") is None


def test_npu_is_detected_and_selects_hccl(monkeypatch):
    """Without an NPU here: a stand-in torch_npu that registers torch.npu, as the real one does on import."""
    compile_modes = []
    npu = types.SimpleNamespace(
        is_available=lambda: True,
        set_compile_mode=lambda jit_compile: compile_modes.append(jit_compile),
    )
    fake = types.ModuleType("torch_npu")
    fake.__spec__ = types.SimpleNamespace(name="torch_npu")
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr(
        devices.importlib.util, "find_spec", lambda name: object() if name == "torch_npu" else None
    )
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cached in (devices.device_type, devices.import_torch_npu):
        cached.cache_clear()
    try:
        assert devices.import_torch_npu() is True
        assert compile_modes == [False]  # packed rows change shape every step
        assert devices.device_type() == "npu" and devices.has_accelerator()
        assert devices.default_ddp_backend() == "hccl"
        assert devices.current_peak_flops() is None
    finally:
        for cached in (devices.device_type, devices.import_torch_npu):
            cached.cache_clear()


@pytest.mark.parametrize(
    "requested, device, bf16, flash_installed, expected",
    [
        ("auto", "cuda", True, True, "flash_attention_2"),
        ("auto", "cuda", False, True, "sdpa"),  # fp32: flash-attn runs only in 16 bits
        ("auto", "cuda", True, False, "sdpa"),
        ("auto", "cpu", True, True, "sdpa"),
        ("auto", "npu", True, True, "sdpa"),
        ("eager", "cuda", True, True, "eager"),  # a named backend is kept
        ("flex_attention", "cpu", False, False, "flex_attention"),
    ],
)
def test_auto_attention_picks_flash_only_where_it_runs(
    monkeypatch, requested, device, bf16, flash_installed, expected
):
    from finetune import loading

    monkeypatch.setattr(loading, "device_type", lambda: device)
    real_find_spec = loading.importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util,
        "find_spec",
        lambda name, *a: (
            (object() if flash_installed else None) if name == "flash_attn" else real_find_spec(name, *a)
        ),
    )
    training_args = types.SimpleNamespace(bf16=bf16, fp16=False)
    assert loading.resolve_attn_implementation(requested, training_args) == expected


@pytest.mark.parametrize("bf16_units, warned", [(False, True), (True, False)])
def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch, bf16_units, warned):
    from finetune import args as args_module

    monkeypatch.setattr(args_module, "cpu_has_bf16_matmul", lambda: bf16_units)
    messages = []
    monkeypatch.setattr(args_module.logger, "warning", lambda message, *a: messages.append(message))
    *_, train = parse_args(["--data_path", "d.json", "--bf16", "True"])
    assert train.bf16
    assert any("--bf16 on a CPU" in m for m in messages) == warned
