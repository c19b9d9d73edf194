"""Summed cross entropy of `hidden @ weight.T` against labels, computed in chunks of positions.

The vocabulary is 125,696 wide: the naive path holds the logits, their fp32 copy, the softmax and its gradient
for every trained position at once (about 2 GB per 1,000 positions). Here each chunk's logits are built,
reduced to the loss, turned into the gradients of `hidden` and `weight`, and dropped, so memory is one chunk and
each logit is read from cache rather than from main memory a handful of times. The loss and gradients are those
of `F.cross_entropy(hidden @ weight.T, labels, reduction="sum")` with the logits upcast to fp32.
"""

from __future__ import annotations

import torch

# Bytes of fp32 logits per chunk. On a CPU every chunk also reads and writes the whole [V, h] weight gradient,
# so chunks are large (~530 rows at V = 125,696: 5-10% faster than 130 rows at hidden 64-256); on a GPU, large
# enough for full-speed matmuls while far below the whole [n, V] (0.24x the naive path's peak at seq 4096).
CHUNK_BYTES = 256 * 2**20


def chunk_positions(vocab_size: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab_size))


# Row sums of exp(logits) inside these bounds need no max shift: every term is a normal fp32 number or
# negligible against the sum, and the gradient matmuls of the unnormalised terms cannot overflow.
_SAFE_SUMS = (1e-30, 1e30)


def _logits(h, weight, work, lowp):
    """h @ weight.T into the reused buffers, as fp32."""
    logits = torch.mm(h, weight.T, out=lowp[: len(h)])
    return logits if logits.dtype == torch.float32 else work[: len(h)].copy_(logits)


def _exp_logits(h, weight, y, work, lowp):
    """exp(h @ weight.T) in fp32 (in `work`), its row sums, and each row's -log softmax at its label.

    Logits are exponentiated unshifted, which saves the max and subtract passes over [rows, V] (about half the
    elementwise time on a CPU); a chunk whose sums leave the safe range is recomputed shifted by its row max.
    """
    logits = _logits(h, weight, work, lowp)
    target = logits.gather(1, y[:, None]).squeeze(1)
    exp = logits.exp_()
    sums = exp.sum(dim=-1)
    if bool(((sums > _SAFE_SUMS[0]) & (sums < _SAFE_SUMS[1])).all()):
        return exp, sums, sums.log() - target
    logits = _logits(h, weight, work, lowp)
    shift = logits.amax(dim=-1)
    exp = logits.sub_(shift[:, None]).exp_()
    sums = exp.sum(dim=-1)
    return exp, sums, sums.log() + shift - target


class _LinearCrossEntropySum(torch.autograd.Function):
    """Gradients are computed during the forward pass, chunk by chunk, and only scaled in backward: the loss is
    the last node of the graph, so its incoming gradient is a scalar."""

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int, grads: bool
    ):
        # `grads`: the caller's grad mode (forward always runs under no_grad); False for a loss-only pass.
        need_hidden, need_weight = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Accumulated in the weight's dtype: this buffer becomes the weight gradient, so it costs no extra memory.
        grad_weight = torch.zeros_like(weight) if need_weight else None
        # Buffers reused by every chunk: on a CPU a fresh allocation of this size is mapped and zeroed by the
        # kernel each time, which cost about 30% of the forward matmul's time at hidden 64.
        shape = (min(chunk, hidden.shape[0]), weight.shape[0])
        work = hidden.new_empty(shape, dtype=torch.float32)
        lowp = work if hidden.dtype == torch.float32 else hidden.new_empty(shape)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            y = labels[start : start + chunk]
            exp, sums, nll = _exp_logits(h, weight, y, work, lowp)
            total += nll.sum()
            if not (need_hidden or need_weight):
                continue
            # d loss / d logits = softmax - onehot. The softmax's 1/sums scales the [rows, h] operands rather
            # than the [rows, V] matrix (one pass fewer); in 16 bits it is folded into the down-cast instead.
            inv = sums.reciprocal()[:, None]
            if hidden.dtype == torch.float32:
                probs, row_scale = exp, inv
            else:
                probs, row_scale = torch.mul(exp, inv, out=lowp[: len(h)]), None
            if need_hidden:
                g = probs @ weight
                if row_scale is not None:
                    g.mul_(row_scale)
                grad_hidden[start : start + chunk] = g.sub_(weight[y])
            if need_weight:
                grad_weight.addmm_(probs.T, h if row_scale is None else h * row_scale)
                grad_weight.index_add_(0, y, h, alpha=-1)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # Scaled in place: a copy would be another [V, h] weight-sized buffer. The graph is used once (the
        # Trainer never retains it), so the saved gradients are not needed afterwards.
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.to(torch.float32)
        for grad in (grad_hidden, grad_weight):
            if grad is not None:
                grad.mul_(scale)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """sum_i CE(hidden[i] @ weight.T, labels[i]) in fp32, for hidden [n, h], weight [V, h], labels [n] (no
    ignored labels: select the trained positions first)."""
    chunk = chunk or chunk_positions(weight.shape[0])
    device = hidden.device.type
    dtype = compute_dtype(device, weight.dtype)
    # The casts' backward returns the gradients in the inputs' dtypes. Inside, autocast would recast the
    # gradient matmuls (not the buffered ones): everything already has the dtype it should run in.
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropySum.apply(hidden, weight, labels, chunk, torch.is_grad_enabled())


def compute_dtype(device_type: str, weight_dtype: torch.dtype) -> torch.dtype:
    """fp32 on a CPU: without bf16 matrix units a 16-bit [rows, V] @ [V, h] matmul (its reduction runs over the
    vocabulary) takes ~100x the fp32 time (38.8 s against 0.33 s for 530 rows at h 64 on an AVX2 EPYC), so
    `--bf16 True` on a CPU would spend hours in the head. Elsewhere: the autocast dtype when autocast is on
    (mixed precision with fp32 master weights: cast as autocast would cast a matmul, since the Function's
    buffered matmuls do not go through autocast), else the weight's own dtype."""
    if device_type == "cpu":
        return torch.float32
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight_dtype
