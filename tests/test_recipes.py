"""Every shipped recipe (found recursively) is a whole run: it parses through the real argument parser,
names DeepSpeed configs that exist, and carries its launch command in a header comment. The DeepSpeed
configs leave to the Trainer what the Trainer owns."""

import json

import pytest
import yaml
from helpers import ROOT

from finetune.args import parse_args

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
TRAINER_OWNED = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
)


pytestmark = pytest.mark.usefixtures("in_repo_root")


def test_recipe_set_is_complete():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    assert len(RECIPES) >= 9
    for size in ("7b", "13b"):
        assert {f"baichuan2_{size}/{mode}.yaml" for mode in ("lora", "qlora", "full_zero3")} <= names
    assert any(n.startswith("multinode/") for n in names)
    assert any(n.startswith("npu/") for n in names)
    assert "demo/tiny_lora.yaml" in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_and_documents_its_launch(recipe):
    text = recipe.read_text(encoding="utf-8")
    assert text.startswith("#"), "a recipe starts with a header comment"
    header = " ".join(line for line in text.splitlines() if line.startswith("#"))
    # The launch command: the entry point with this very recipe.
    assert "finetune/sft.py" in header and f"--config {recipe.relative_to(ROOT)}" in header
    config = yaml.safe_load(text)
    model, data, lora, train = parse_args(["--config", str(recipe.relative_to(ROOT))])
    assert model.model_name_or_path == config["model_name_or_path"]
    assert data.data_path == [config["data_path"]]
    assert train.output_dir.endswith(config["output_dir"])
    if train.deepspeed:
        assert (ROOT / train.deepspeed).is_file()
        if lora.q_lora:
            assert train.hf_deepspeed_config.get_value("zero_optimization.stage") < 3


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_ds_config_leaves_trainer_settings_auto(path):
    config = json.loads(path.read_text())
    assert all(config[key] == "auto" for key in TRAINER_OWNED)
    assert config["bf16"]["enabled"] == "auto"
    zero = config["zero_optimization"]
    if zero["stage"] == 3:
        # ZeRO-3 saves must be whole models, not empty shards (docs/BAICHUAN2.md, "Known problems").
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    if "offload" in path.stem:
        assert zero["offload_optimizer"]["device"] == "cpu"
        assert all(v == "auto" for v in config["optimizer"]["params"].values())


def test_ds_config_set_is_complete():
    assert {p.stem for p in DS_CONFIGS} >= {"zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"}
