"""flex_attention (the GPU path for packed rows and ALiBi without flash-attn) equals sdpa: packed rows and
padding, 7B (RoPE) and 13B (ALiBi). On a CPU flex runs uncompiled and forward-only, which is what is checked
here; the GPU run (compiled, with backward) is in docs/BENCHMARKS.md."""

import warnings

import pytest
import torch
from attention_models import tiny_model


@pytest.mark.parametrize("arch", ["rope", "alibi"])
def test_flex_equals_sdpa_on_packed_and_padded_rows(arch):
    model = tiny_model(arch).eval()
    ids = torch.randint(3, 300, (2, 20))
    packed = torch.tensor([list(range(8)) + list(range(12)), list(range(20))])
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 15:] = 0

    def run(backend):
        model.config._attn_implementation = backend
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncompiled flex warns that it is slow
            return model(input_ids=ids, position_ids=packed).logits, model(
                input_ids=ids, attention_mask=mask
            ).logits

    (sdpa_packed, sdpa_padded), (flex_packed, flex_padded) = run("sdpa"), run("flex_attention")
    torch.testing.assert_close(flex_packed, sdpa_packed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex_padded[0], sdpa_padded[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex_padded[1, :15], sdpa_padded[1, :15], atol=1e-5, rtol=1e-5)
