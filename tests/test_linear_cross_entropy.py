"""The chunked head + cross entropy equals the naive `F.cross_entropy(h @ W.T)` in loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from finetune.models.baichuan import linear_cross_entropy as lce
from finetune.models.baichuan.linear_cross_entropy import chunk_positions, linear_cross_entropy_sum


def naive(hidden, weight, labels):
    return F.cross_entropy((hidden @ weight.T).float(), labels, reduction="sum")


def both_paths(hidden, weight, labels, chunk, chunked=linear_cross_entropy_sum):
    """Loss and (hidden, weight) gradients of the naive path, then of the chunked one."""
    results = []
    for loss_fn in (naive, lambda h, w, y: chunked(h, w, y, chunk)):
        hidden.grad = weight.grad = None
        loss = loss_fn(hidden, weight, labels)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    return results


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_loss_and_gradients_equal_naive_path(chunk, weight_grad):
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=weight_grad)
    labels = torch.randint(0, 50, (7,))

    expected = naive(hidden, weight, labels)
    (expected * 0.5).backward()
    expected_grads = (hidden.grad.clone(), weight.grad.clone() if weight_grad else None)
    hidden.grad = weight.grad = None

    got = linear_cross_entropy_sum(hidden, weight, labels, chunk)
    (got * 0.5).backward()  # a non-unit incoming gradient, as with the division by num_items_in_batch
    torch.testing.assert_close(got, expected.float())
    torch.testing.assert_close(hidden.grad, expected_grads[0], atol=1e-6, rtol=1e-5)
    if weight_grad:
        torch.testing.assert_close(weight.grad, expected_grads[1], atol=1e-6, rtol=1e-5)
    else:
        assert weight.grad is None


def test_gradient_flows_through_a_normalised_weight():
    torch.manual_seed(1)
    raw = torch.randn(40, 8, requires_grad=True)
    hidden = torch.randn(5, 8)
    labels = torch.randint(0, 40, (5,))
    naive(hidden, F.normalize(raw), labels).backward()
    expected = raw.grad.clone()
    raw.grad = None
    linear_cross_entropy_sum(hidden, F.normalize(raw), labels, 2).backward()
    torch.testing.assert_close(raw.grad, expected, atol=1e-6, rtol=1e-5)


def test_no_grad_gives_the_loss_only():
    hidden, weight = torch.randn(4, 8), torch.randn(30, 8)
    labels = torch.tensor([1, 2, 3, 29])
    with torch.no_grad():
        torch.testing.assert_close(
            linear_cross_entropy_sum(hidden, weight, labels, 3), naive(hidden, weight, labels)
        )


def test_chunks_stay_bounded_for_the_real_vocabulary():
    rows = chunk_positions(125696)
    assert 1 <= rows and rows * 125696 * 4 <= 256 * 2**20


def test_bf16_kernel_matches_the_naive_path_upcast_to_fp32():
    # The 16-bit path a GPU takes: bf16 logits buffer, fp32 softmax, gradients back in bf16.
    torch.manual_seed(2)
    hidden = torch.randn(9, 16, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(60, 16, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 60, (9,))

    def kernel(h, w, y, chunk):
        return lce._LinearCrossEntropySum.apply(h, w, y, chunk, True)

    expected, got = both_paths(hidden, weight, labels, 4, chunked=kernel)
    assert got[0].dtype == torch.float32 and got[1].dtype == got[2].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-4)
    for g, e in zip(got[1:], expected[1:], strict=True):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("logit_scale", [1.0, 60.0, -60.0])
def test_extreme_logits_take_the_shifted_path_and_stay_exact(logit_scale):
    # Rows whose exp-sums overflow (large logits) or vanish (all logits very negative) are recomputed shifted by
    # their max; a chunk mixing them with ordinary rows must still equal the naive path.
    torch.manual_seed(3)
    hidden = torch.randn(6, 8, dtype=torch.float32)
    hidden[::2] *= abs(logit_scale)
    weight = torch.randn(40, 8)
    if logit_scale < 0:
        weight = torch.cat([weight.abs(), weight.abs()], dim=0)  # same-sign logits: all very negative below
        hidden = -hidden.abs()
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    labels = torch.randint(0, weight.shape[0], (6,))
    expected, got = both_paths(hidden, weight, labels, 4)
    assert torch.isfinite(got[0])
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-3)
    for g, e in zip(got[1:], expected[1:], strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_cpu_runs_the_head_in_fp32_whatever_the_dtypes(monkeypatch):
    # `--bf16 True` on a CPU: fp32 master weights under bf16 autocast, or a bf16 model; hidden states in either
    # dtype. The kernel gets fp32 (16-bit CPU matmuls over the vocabulary are ~100x slower), the gradients come
    # back in each input's dtype.
    torch.manual_seed(4)
    labels = torch.randint(0, 60, (9,))
    kernel_dtypes = []
    kernel = lce._LinearCrossEntropySum.apply

    def spy(hidden, weight, *args):
        kernel_dtypes.append((hidden.dtype, weight.dtype))
        return kernel(hidden, weight, *args)

    monkeypatch.setattr(lce._LinearCrossEntropySum, "apply", spy)
    for weight_dtype, hidden_dtype, autocast in [
        (torch.float32, torch.float32, True),
        (torch.float32, torch.bfloat16, True),
        (torch.bfloat16, torch.bfloat16, False),
    ]:
        weight = torch.randn(60, 16).to(weight_dtype).requires_grad_(True)
        hidden = torch.randn(9, 16).to(hidden_dtype).requires_grad_(True)
        # The exact result: the naive path on the same values in fp32, outside autocast.
        expected = both_paths(hidden.float().detach().requires_grad_(), weight.float().detach().requires_grad_(),
                              labels, 4)[0]  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = both_paths(hidden, weight, labels, 4)[1]
        assert kernel_dtypes.pop() == (torch.float32, torch.float32)
        assert got[1].dtype == hidden_dtype and got[2].dtype == weight_dtype
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
        for g, e in zip(got[1:], expected[1:], strict=True):
            torch.testing.assert_close(
                g, e.to(g.dtype), rtol=1e-5, atol=1e-5
            )  # bf16 ones: fp32, rounded once


@pytest.mark.parametrize(
    "device, autocast_dtype, weight_dtype, expected",
    [
        ("cpu", None, torch.bfloat16, torch.float32),
        ("cpu", torch.bfloat16, torch.float32, torch.float32),
        ("cuda", None, torch.bfloat16, torch.bfloat16),
        ("cuda", None, torch.float32, torch.float32),
        ("cuda", torch.bfloat16, torch.float32, torch.bfloat16),  # fp32 master weights under autocast
        ("npu", torch.float16, torch.float32, torch.float16),
    ],
)
def test_compute_dtype(monkeypatch, device, autocast_dtype, weight_dtype, expected):
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type: autocast_dtype is not None)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: autocast_dtype)
    assert lce.compute_dtype(device, weight_dtype) == expected
