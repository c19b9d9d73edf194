"""One dtype table: both spellings parse, auto only where allowed, one error naming the choices."""

import pytest
import torch

from finetune.dtypes import config_dtype, config_name, parse_dtype


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float32", torch.float32),
    ],
)
def test_short_and_config_names_parse_to_one_dtype(name, dtype):
    assert parse_dtype(name) is dtype
    assert parse_dtype(config_name(dtype), allow_auto=False) is dtype


def test_auto_and_unknown_names():
    assert parse_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype 'auto'; choose one of bf16"):
        parse_dtype("auto", allow_auto=False)
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        parse_dtype("int8")


@pytest.mark.parametrize(
    "config, dtype",
    [
        ({"torch_dtype": "bfloat16"}, torch.bfloat16),
        ({"dtype": "float16"}, torch.float16),
        ({}, torch.float32),
    ],
)
def test_config_dtype_reads_either_key(config, dtype):
    assert config_dtype(config) is dtype
