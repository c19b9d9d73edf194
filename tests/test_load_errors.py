"""Every way a model directory, tokenizer or command line can be wrong ends as one `error:` line naming the
path (or file, flag, line) and the problem, with exit status 2, in every tool: finetune.chat, evaluate,
export and sft. Before, these were tracebacks, several misleading ("Repo id must be in the form…" for a
missing local path, a bare EOFError for a 0-byte weight file, advice to use trust_remote_code for an unknown
model_type)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune import exits
from finetune.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("load-errors")
    return root, {
        fmt: write_tiny_checkpoint(root / f"tiny-{fmt}", arch="7b", seed=0, fmt=fmt)
        for fmt in ("bin", "safetensors", "sharded")
    }


def edit_state(file: Path, change) -> None:
    state = torch.load(file, weights_only=True)
    change(state)
    torch.save(state, file)


def edit_config(directory: Path, **values) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **values}))


def cut(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def nan_safetensors(directory: Path) -> None:
    tensors = load_file(directory / "model.safetensors")
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


# (name, source format, damage to a copy of the model directory, the phrase the one line must hold)
CASES = [
    ("no tokenizer.model", "bin", lambda d: (d / "tokenizer.model").unlink(), "no tokenizer.model"),
    ("garbage tokenizer.model", "bin", lambda d: (d / "tokenizer.model").write_bytes(b"x" * 64),
     "tokenizer.model: not a SentencePiece model"),
    ("0-byte weights", "bin", lambda d: (d / "pytorch_model.bin").write_bytes(b""), "pytorch_model.bin: empty"),
    ("cut .bin", "bin", lambda d: cut(d / "pytorch_model.bin"), "pytorch_model.bin: truncated or corrupt"),
    ("cut safetensors", "safetensors", lambda d: cut(d / "model.safetensors"), "model.safetensors: truncated"),
    ("lost shard", "sharded", lambda d: (d / "pytorch_model-00002-of-00003.bin").unlink(),
     "names missing shard(s) pytorch_model-00002-of-00003.bin"),
    ("missing tensor", "bin", lambda d: edit_state(d / "pytorch_model.bin", lambda s: s.pop("model.norm.weight")),
     "missing tensors: model.norm.weight"),
    ("unexpected tensor", "bin",
     lambda d: edit_state(d / "pytorch_model.bin", lambda s: s.update({"model.extra.weight": torch.zeros(2)})),
     "unexpected tensors: model.extra.weight"),
    ("unknown model_type", "bin", lambda d: edit_config(d, model_type="frobnicate"),
     "model_type 'frobnicate' is not a model transformers"),
    ("bad config.json", "bin", lambda d: (d / "config.json").write_text('{"model_type": "baichuan",'),
     "config.json: not valid JSON"),
    ("no config.json", "bin", lambda d: (d / "config.json").unlink(), "no config.json"),
    ("NaN weights", "safetensors", nan_safetensors, "tensor model.norm.weight holds NaN"),
]  # fmt: skip


@pytest.fixture(scope="module")
def damaged(models):
    root, sources = models
    dirs = {}
    for name, fmt, damage, _ in CASES:
        target = root / "damaged" / name.replace(" ", "-")
        shutil.copytree(sources[fmt], target)
        damage(target)
        dirs[name] = target
    return dirs


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.mark.parametrize(("name", "phrase"), [(c[0], c[3]) for c in CASES])
def test_chat_names_the_broken_file(name, phrase, damaged, capsys):
    from finetune.chat import main

    assert main(["--model", str(damaged[name]), "--prompt", "hi", "--device", "cpu"]) == exits.BAD_INPUT
    line = one_error_line(capsys)
    assert phrase in line and str(damaged[name]) in line, line


def test_paths_are_never_taken_for_hub_ids(models, capsys, monkeypatch):
    from finetune.chat import main

    root, sources = models
    monkeypatch.chdir(root)
    cases = [
        (str(root / "nope" / "model"), "no such directory"),
        ("./tiny-bim", "no such directory (did you mean"),  # a relative typo, not a hub lookup
        ("damaged/tiny-sharded", "no such directory"),  # owner/name in form, but damaged/ exists here
        (str(sources["bin"] / "config.json"), "is a file; give the model's directory"),
    ]
    for path, phrase in cases:
        assert main(["--model", path, "--prompt", "hi"]) == exits.BAD_INPUT
        line = one_error_line(capsys)
        assert phrase in line and path in line, line
    # A real hub id while offline: said so, with what to do.
    monkeypatch.setattr("huggingface_hub.constants.is_offline_mode", lambda: True)
    assert main(["--model", "some-org/not-downloaded", "--prompt", "hi"]) == exits.BAD_INPUT
    line = one_error_line(capsys)
    assert (
        "not in the hub cache while offline" in line
        and "huggingface-cli download some-org/not-downloaded" in line
    )


@pytest.mark.parametrize("name", ["cut .bin", "unknown model_type", "NaN weights"])
def test_evaluate_and_export_give_the_same_line(name, damaged, tmp_path, capsys):
    from finetune.evaluate import main as evaluate
    from finetune.export import main as export

    data = tmp_path / "eval.json"
    turns = [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]
    data.write_text(json.dumps([{"id": "1", "conversations": turns}], ensure_ascii=False))
    phrase = dict((c[0], c[3]) for c in CASES)[name]
    assert evaluate(["--model", str(damaged[name]), "--data_path", str(data), "--device", "cpu"]) == 2
    assert phrase in one_error_line(capsys)
    assert export(["--model", str(damaged[name]), "--output", str(tmp_path / "out")]) == 2
    assert phrase in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_export_refuses_an_adapter_holding_nan(models, tmp_path, capsys):
    from adapters import make_adapter

    from finetune.export import main as export

    _, sources = models
    adapter = make_adapter(sources["bin"], tmp_path / "adapter", scale=0.5)
    weights = load_file(adapter / "adapter_model.safetensors")
    name = sorted(weights)[0]
    weights[name][0] = float("inf")
    save_file(weights, adapter / "adapter_model.safetensors")
    assert export(["--adapter", str(adapter), "--output", str(tmp_path / "merged")]) == exits.BAD_INPUT
    line = one_error_line(capsys)
    assert f"{adapter}: tensor " in line and "holds inf" in line and "lora_" in line


def test_sft_load_errors_are_one_line_before_training(damaged, tmp_path, capsys, monkeypatch):
    from accelerate.state import AcceleratorState

    from finetune import sft

    monkeypatch.chdir(ROOT)
    data = ROOT / "data" / "sample_chat.json"
    for name in ("no tokenizer.model", "missing tensor", "bad config.json"):
        argv = ["--model_name_or_path", str(damaged[name]), "--data_path", str(data)]
        argv += ["--output_dir", str(tmp_path / name.replace(" ", "-")), "--report_to", "none"]
        try:
            assert sft.main(argv) == exits.BAD_INPUT
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        line = one_error_line(capsys)
        assert dict((c[0], c[3]) for c in CASES)[name] in line, line


# ---------------------------------------------------------------- flags and recipes


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--learnig_rate", "1e-3"], "unknown argument: --learnig_rate (did you mean --learning_rate?)"),
        (["--no_cuda", "True"], "--no_cuda (did you mean --use_cpu?)"),
        (["--lora_alpa", "8", "--weight_decy", "0.1"], "unknown arguments: --lora_alpa (did you mean --lora_alpha?); --weight_decy (did you mean --weight_decay?)"),
        (["--learning_rate", "fast"], "invalid float value: 'fast'"),
        (["--deepspeed", "missing.json"], "--deepspeed missing.json: no such file"),
    ],
)  # fmt: skip
def test_flag_errors_say_what_was_meant(argv, phrase):
    from finetune.args import ConfigError, parse_args

    with pytest.raises(ConfigError) as info:
        parse_args(["--data_path", "a.json", *argv])
    assert phrase in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("data_path: a.json\nnum_train_epoch: 2\n", "bad.yaml, line 2: unknown key 'num_train_epoch' (did you mean --num_train_epochs?)"),
        ("data_path: a.json\nuse_lora: [True\nlora_r: 8\n", "bad.yaml, line 3 column 7: not valid YAML (expected ',' or ']', but got ':')"),
        ("data_path: a.json\n  lora_r: 8\n", "bad.yaml, line 2 column 9: not valid YAML (mapping values are not allowed here)"),
    ],
)  # fmt: skip
def test_recipe_errors_name_file_and_line(text, phrase, tmp_path):
    from finetune.args import ConfigError, parse_args

    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_args(["--config", str(tmp_path / "bad.yaml")])
    assert phrase in str(info.value), str(info.value)


def test_invalid_deepspeed_json_names_file_line_and_flag(tmp_path):
    from finetune.args import ConfigError, parse_args

    config = tmp_path / "ds.json"
    config.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(ConfigError) as info:
        parse_args(["--data_path", "a.json", "--deepspeed", str(config)])
    assert f"--deepspeed {config}, line 2 column 36: not valid JSON" in str(info.value)
