"""The classic write-ups' attention snippets, run as their users write them against attnperf's
layer: each either gives what the write-up states (shapes and values checked here) or fails with a
message naming the convention to use, never a silently different result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnperf.layers
from attnperf.layers import MultiHeadAttention

ATOL = 1e-5  # float32, O(1) values; the two sides differ by association order only


def test_zoo_quick_start_returns_output_and_weights() -> None:
    """The zoo's quick start: ``MultiHeadAttention(d_model=512, num_heads=8, dropout=0.1)`` then
    ``output, attention_weights = attn(query, key, value)`` on ``(2, 128, 512)`` inputs, stated to
    give ``(2, 128, 512)`` and ``(2, 8, 128, 128)``. Their layer returns the weights by default;
    attnperf's returns the output alone unless asked (weights off a fused kernel cost a recomputed
    score matrix), so the construction line names it: ``return_attention=True``."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=512, num_heads=8, dropout=0.1, return_attention=True)
    query, key, value = torch.randn(2, 128, 512), torch.randn(2, 128, 512), torch.randn(2, 128, 512)
    output, attention_weights = attn(query, key, value)
    assert output.shape == (2, 128, 512)
    assert attention_weights.shape == (2, 8, 128, 128)
    assert torch.allclose(attention_weights.sum(-1), torch.ones(2, 8, 128), atol=ATOL)  # before dropout
    # Per call instead of per layer, and the eval-mode output equals the output-only call's.
    attn.eval()
    plain = MultiHeadAttention(d_model=512, num_heads=8, dropout=0.1).eval()
    plain.load_state_dict(attn.state_dict())
    out_only = plain(query, key, value)
    output, attention_weights = plain(query, key, value, return_attention=True)
    assert torch.equal(output, out_only)
    assert torch.allclose(attn(query, key, value)[0], output, atol=ATOL)
    # The weights are the ones the output was computed with: out_proj(weights @ v).
    v = plain.v_proj(value).view(2, 128, 8, 64).transpose(1, 2)
    assert torch.allclose(
        plain.out_proj((attention_weights @ v).transpose(1, 2).reshape(2, 128, 512)), output, atol=1e-4
    )
    # Without the switch a single tensor comes back (what attnperf's docs state, not a pair).
    assert isinstance(out_only, torch.Tensor)
    with pytest.raises(ValueError, match=r"return_attention must be True or False, got 'yes'"):
        MultiHeadAttention(d_model=512, num_heads=8, return_attention="yes")


def test_zoo_quick_start_verbatim_after_one_import_line() -> None:
    """The zoo's quick start exactly as written, the import line the only change: a fresh layer (so in
    training, dropout 0.1) returns the stated shapes, and the weights are the write-up's
    ``dropout(softmax(scores))``, the ones its output was computed with."""
    from attnperf.layers.zoo import MultiHeadAttention  # the one changed line

    torch.manual_seed(0)
    query, key, value = torch.randn(2, 128, 512), torch.randn(2, 128, 512), torch.randn(2, 128, 512)
    # --- the write-up's lines ---
    attn = MultiHeadAttention(d_model=512, num_heads=8, dropout=0.1)
    output, attention_weights = attn(query, key, value)
    # ---
    assert output.shape == (2, 128, 512)
    assert attention_weights.shape == (2, 8, 128, 128)
    # After dropout: a tenth of the weights zeroed, the rest scaled by 1/0.9, so rows sum to ~1 on average.
    zeroed = (attention_weights == 0).float().mean().item()
    assert 0.08 < zeroed < 0.12
    assert not torch.allclose(attention_weights.sum(-1), torch.ones(2, 8, 128), atol=1e-3)
    v = attn.v_proj(value).view(2, 128, 8, 64).transpose(1, 2)
    expected = attn.out_proj((attention_weights @ v).transpose(1, 2).reshape(2, 128, 512))
    assert torch.allclose(expected, output, atol=1e-4)  # the output is the one these weights give
    # In eval mode the rows are softmax rows and equal attnperf's own layer's weights.
    attn.eval()
    output, attention_weights = attn(query, key, value)
    assert torch.allclose(attention_weights.sum(-1), torch.ones(2, 8, 128), atol=ATOL)
    plain = attnperf.layers.MultiHeadAttention(d_model=512, num_heads=8).eval()
    plain.load_state_dict(attn.state_dict())
    out, weights = plain(query, key, value, return_attention=True)
    assert torch.equal(out, output)
    assert torch.equal(weights, attention_weights)
    # The write-up's mask, positional and 0 = masked.
    causal = torch.tril(torch.ones(128, 128))
    _, masked = attn(query, key, value, causal)
    assert torch.all(masked.triu(1) == 0)
    # A backend that cannot hand over the weights it applied is refused in training, naming the convention.
    sdpa = MultiHeadAttention(d_model=512, num_heads=8, dropout=0.1, backend="sdpa")
    with pytest.raises(ValueError, match=r"returns the weights after dropout .* only backend='eager'"):
        sdpa(query, key, value)
    assert sdpa.eval()(query, key, value)[1].shape == (2, 8, 128, 128)


def test_tutorial_float_zero_one_mask_is_refused_or_taken_under_mask() -> None:
    """The tutorials' ``scores.masked_fill(mask == 0, -inf)``: a float ``torch.tril(torch.ones(T, T))``
    given as ``attn_mask`` used to be *added* to the scores (masking nothing). Now it is refused with
    the convention to use, and ``mask=`` takes it as those write-ups mean it."""
    torch.manual_seed(1)
    layer = MultiHeadAttention(d_model=64, num_heads=4).eval()
    causal = MultiHeadAttention(d_model=64, num_heads=4, causal=True).eval()
    causal.load_state_dict(layer.state_dict())
    x = torch.randn(2, 10, 64)
    mask = torch.tril(torch.ones(10, 10))  # 1 = attend, 0 = masked
    with pytest.raises(ValueError, match=r"attn_mask: a float mask of only 0.0 and 1.0 is ambiguous.*pass mask= "):
        layer(x, x, x, attn_mask=mask)
    with pytest.raises(ValueError, match=r"key_padding_mask: a float mask of only 0.0 and 1.0 is ambiguous"):
        layer(x, x, x, key_padding_mask=torch.ones(2, 10).tril())
    assert torch.allclose(layer(x, x, x, mask=mask), causal(x), atol=ATOL)
    assert torch.allclose(layer(x, x, x, mask=mask.long()), causal(x), atol=ATOL)
    assert torch.allclose(layer(x, x, x, mask=mask[None, None].bool()), causal(x), atol=ATOL)
    # A real additive float mask (0 and -inf, or any bias) is still taken as one.
    additive = torch.zeros(10, 10).masked_fill(mask == 0, float("-inf"))
    assert torch.allclose(layer(x, x, x, attn_mask=additive), causal(x), atol=ATOL)
    # The Annotated Transformer's source padding mask: (src != pad).unsqueeze(-2), [B, 1, Lk].
    src = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]])
    src_mask = (src != 0).unsqueeze(-2)
    assert torch.allclose(layer(x, x, x, mask=src_mask), layer(x, key_padding_mask=src == 0), atol=ATOL)
    with pytest.raises(ValueError, match=r"mask: expected \(10\|1, 10\) \[Lq, Lk\], .* got \(2, 9\)"):
        layer(x, x, x, mask=torch.ones(2, 9))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "tiled"])
def test_sdpa_users_is_causal_per_call(backend) -> None:
    """SDPA users pass ``is_causal=True`` per call. Where Lq == Lk SDPA's top-left and attnperf's
    bottom-right causal masks are one mask, so it is taken (on any backend: it is the mechanism's
    own option, no per-call mask needed); where they differ it is refused, naming both."""
    torch.manual_seed(2)
    layer = MultiHeadAttention(d_model=32, num_heads=4, backend=backend).eval()
    causal = MultiHeadAttention(d_model=32, num_heads=4, causal=True).eval()
    causal.load_state_dict(layer.state_dict())
    x = torch.randn(2, 7, 32)
    assert torch.allclose(layer(x, is_causal=True), causal(x), atol=ATOL)
    assert not torch.allclose(layer(x), causal(x), atol=1e-3)  # the flag changes the result
    # As SDPA computes it with the layer's own projections.
    q, k, v = (proj(x).view(2, 7, 4, 8).transpose(1, 2) for proj in (layer.q_proj, layer.k_proj, layer.v_proj))
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, 32)
    assert torch.allclose(layer(x, is_causal=True), layer.out_proj(sdpa), atol=ATOL)
    _, weights = layer(x, is_causal=True, need_weights=True)
    assert (weights.triu(1) == 0).all()
    with pytest.raises(ValueError, match=r"is_causal=True with Lq=7 != Lk=9 is ambiguous: SDPA aligns .* top-left"):
        layer(x, torch.randn(2, 9, 32), is_causal=True)
    with pytest.raises(ValueError, match=r"is_causal must be True or False, got 1"):
        layer(x, is_causal=1)
