"""`--torch_compile`: each decoder layer compiled in place (regional compilation) trains exactly as eager."""

import copy
from types import SimpleNamespace

import pytest
import torch
from attention_models import tiny_model
from torch._dynamo.utils import counters

from finetune.compile import compile_for_training


def compile_args() -> SimpleNamespace:
    return SimpleNamespace(torch_compile=True, torch_compile_backend=None, torch_compile_mode=None)


def loss_and_grads(model, ids, positions):
    model.zero_grad()
    loss = model(input_ids=ids, position_ids=positions, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["rope", "alibi"])
def test_compiled_layers_train_like_eager(arch):
    torch._dynamo.reset()
    counters.clear()
    eager = tiny_model(arch).train()
    compiled = copy.deepcopy(eager)
    args = compile_args()
    assert compile_for_training(compiled, args)
    # The Trainer must not compile the whole model on top.
    assert (args.torch_compile, args.torch_compile_backend, args.torch_compile_mode) == (False, None, None)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their names
    eager.activation_checkpointing_enable()
    compiled.activation_checkpointing_enable()  # as the recipes train: the compiled layer is recomputed
    ids = torch.randint(3, 300, (2, 24))
    # Two packed samples a row.
    positions = torch.cat([torch.arange(10), torch.arange(14)])[None].expand(2, -1)
    loss, grads = loss_and_grads(eager, ids, positions)
    compiled_loss, compiled_grads = loss_and_grads(compiled, ids, positions)
    assert counters["stats"]["unique_graphs"] >= 1  # the layers did run compiled
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_models_without_decoder_layer_class_are_left_to_the_trainer():
    """Remote code (the official modeling files) has no GradientCheckpointingLayer: the Trainer compiles."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    args = compile_args()
    assert not compile_for_training(model, args)
    assert args.torch_compile
    assert model[0]._compiled_call_impl is None


def test_nothing_is_compiled_without_the_flag():
    model = tiny_model("rope")
    args = SimpleNamespace(torch_compile=False, torch_compile_backend=None, torch_compile_mode=None)
    assert not compile_for_training(model, args)
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)
