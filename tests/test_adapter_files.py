"""Adapter directories: adapter_config.json with only the keys old peft reads (the same adapter for the new
one), refusal to write what an old reader would misread, and the base fingerprint checked on load."""

import json
import shutil

import pytest
import torch
from adapters import make_adapter
from peft import LoraConfig

import finetune  # noqa: F401  (registers the Baichuan classes)
from finetune.adapter_files import (
    FINGERPRINT,
    OLD_PEFT_KEYS,
    AdapterError,
    base_fingerprint,
    portable_adapter_config,
)
from finetune.export import main as export_main
from finetune.loading import load_model_for_inference
from finetune.tiny import write_tiny_checkpoint


def saved_config(**options) -> dict:
    config = LoraConfig(task_type="CAUSAL_LM", r=1, lora_alpha=32, target_modules=["W_pack"], **options)
    return json.loads(json.dumps(config.to_dict(), default=sorted))


def test_portable_config_is_the_same_adapter_for_new_peft():
    config = saved_config(lora_dropout=0.1, use_dora=True)
    assert "alora_invocation_tokens" in config  # what peft 0.10-0.13 stop at
    portable = portable_adapter_config(config, "adapter_config.json")
    assert set(portable) <= OLD_PEFT_KEYS
    reread = LoraConfig(**portable).to_dict()
    assert json.loads(json.dumps(reread, default=sorted)) == {
        **config,
        "peft_version": reread["peft_version"],
    }


@pytest.mark.parametrize("option", [{"lora_bias": True}, {"use_qalora": True}])
def test_newer_options_are_refused_in_one_line(option):
    with pytest.raises(AdapterError) as error:
        portable_adapter_config(saved_config(**option), "out/adapter_config.json")
    message = str(error.value)
    assert (
        "\n" not in message
        and message.startswith("out/adapter_config.json: ")
        and next(iter(option)) in message
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint")
    base = write_tiny_checkpoint(root / "base", arch="7b", seed=0)
    adapter = make_adapter(base, root / "adapter")
    return root, base, adapter


def test_fingerprint_ignores_storage_but_not_weights(trained, tmp_path):
    root, base, _ = trained
    same = tmp_path / "portable"
    assert export_main(["--portable", str(base), "--output", str(same)]) == 0
    assert base_fingerprint(same) == base_fingerprint(base)
    other = write_tiny_checkpoint(tmp_path / "other", arch="7b", seed=1)
    assert base_fingerprint(other)["tensor_sha256"] != base_fingerprint(base)["tensor_sha256"]
    assert base_fingerprint(other)["config_sha256"] == base_fingerprint(base)["config_sha256"]


def test_adapter_on_a_replaced_base_is_an_error_naming_both(trained, tmp_path, capsys):
    root, base, adapter = trained
    recorded = json.loads((adapter / FINGERPRINT).read_text())["base"]
    assert recorded == str(base)
    # The same path now holds another checkpoint (a re-download, another seed): the adapter must not load silently.
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    replaced = write_tiny_checkpoint(tmp_path / "replaced", arch="7b", seed=1)
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(replaced)})
    )
    with pytest.raises(AdapterError) as error:
        load_model_for_inference(str(moved), dtype=torch.float32)
    message = str(error.value)
    assert "\n" not in message and str(base) in message and str(replaced) in message
    assert "--allow_base_mismatch" in message
    assert export_main(["--adapter", str(moved), "--output", str(tmp_path / "m1")]) == 1
    assert str(replaced) in capsys.readouterr().err
    argv = ["--adapter", str(moved), "--output", str(tmp_path / "m2"), "--allow_base_mismatch"]
    assert export_main(argv) == 0
    assert load_model_for_inference(str(moved), dtype=torch.float32, allow_base_mismatch=True) is not None
