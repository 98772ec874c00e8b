"""The functional entry point and the layers: bad input, shapes, caches and weights."""

from __future__ import annotations

import pytest
import torch

from attnperf import Unsupported, attention
from attnperf.layers import KVCache, MultiHeadAttention, MultiheadAttention, generate, sinusoidal_table


def qkv(heads: int = 4, kv_heads: int = 2, q_len: int = 5, kv_len: int = 7, dim: int = 8):
    return (
        torch.randn(2, heads, q_len, dim),
        torch.randn(2, kv_heads, kv_len, dim),
        torch.randn(2, kv_heads, kv_len, dim),
    )


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda q, k, v: ([[1.0]], k, v), TypeError, r"q must be a torch.Tensor, got list"),
        (lambda q, k, v: (q, k, "v"), TypeError, r"v must be a torch.Tensor, got str"),
        (lambda q, k, v: (q[0], k, v), ValueError, r"q must have 4 dimensions \[B, H, L, D\], got shape \(4, 5, 8\)"),
        (lambda q, k, v: (q, k[..., :4], v[..., :4]), ValueError, r"head_dim of q \(8\) and k \(4\) must match"),
        (lambda q, k, v: (q, k, v[:, :, :3]), ValueError, r"k and v must have the same shape"),
        (
            lambda q, k, v: (torch.randn(2, 3, 5, 8), k, v),
            ValueError,
            r"heads \(3\) must be divisible by kv_heads \(2\)",
        ),
        (lambda q, k, v: (q.int(), k.int(), v.int()), ValueError, r"dtype must be one of \[.*\], got torch.int32"),
        (lambda q, k, v: (q.double(), k, v), ValueError, r"q, k, v must share one dtype"),
    ],
)
def test_bad_tensors_name_the_parameter(change, error, message) -> None:
    with pytest.raises(error, match=message):
        attention(*change(*qkv()))


def test_bad_options_name_the_option() -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"window must be an integer >= 1, got 0"):
        attention(q, k, v, mechanism="window", window=0)
    with pytest.raises(ValueError, match=r"top_k must be between 1 and kv_len \(7\), got 9"):
        attention(q, k, v, mechanism="topk", top_k=9)
    with pytest.raises(ValueError, match=r"backend must be one of \[.*'eager'.*\], got 'fast'"):
        attention(q, k, v, backend="fast")


def test_unsupported_backend_says_why() -> None:
    q, k, v = qkv()
    with pytest.raises(Unsupported, match=r"sdpa-math cannot run linear .*: sdpa-math does not implement linear"):
        attention(q, k, v, mechanism="linear", backend="sdpa-math")


def test_functional_matches_reference_for_gqa_window() -> None:
    q, k, v = qkv(q_len=7)
    out = attention(q, k, v, mechanism="window", backend="tiled", window=3, causal=True)
    want = attention(q.double(), k.double(), v.double(), mechanism="window", window=3, causal=True)
    assert torch.allclose(out.double(), want, atol=1e-5)


@pytest.mark.parametrize("positions", [None, "sinusoidal", "learned", "rope", "alibi"])
@pytest.mark.parametrize("backend", ["eager", "sdpa-math", "tiled"])
def test_layer_backends_agree(positions, backend) -> None:
    torch.manual_seed(0)
    ref = MultiHeadAttention(32, 4, kv_heads=2, positions=positions, causal=True)
    layer = MultiHeadAttention(32, 4, kv_heads=2, positions=positions, causal=True, backend=backend)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 11, 32)
    assert torch.allclose(layer(x), ref(x), atol=1e-5)


def test_cross_attention_layer_reads_memory_of_another_width_and_length() -> None:
    layer = MultiHeadAttention(32, 4, kv_heads=1, kv_dim=12)
    out = layer(torch.randn(2, 5, 32), torch.randn(2, 9, 12))
    assert out.shape == (2, 5, 32)


def test_return_attention_gives_normalized_weights_and_needs_eager() -> None:
    layer = MultiHeadAttention(16, 2, mechanism="window", window=3, causal=True)
    _, weights = layer(torch.randn(1, 6, 16), return_attention=True)
    assert weights.shape == (1, 2, 6, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2, 6))
    assert (weights[0, 0].triu(1) == 0).all()
    assert (weights[0, 0].tril(-3) == 0).all()
    tiled = MultiHeadAttention(16, 2, mechanism="window", window=3, causal=True, backend="tiled")
    tiled.load_state_dict(layer.state_dict())
    x = torch.randn(1, 6, 16)
    out, recomputed = tiled(x, return_attention=True)  # recomputed on the reference path
    want_out, want = layer(x, return_attention=True)
    assert torch.allclose(recomputed, want, atol=1e-6)
    assert torch.allclose(out, want_out, atol=1e-5)


@pytest.mark.parametrize("positions", [None, "rope", "alibi", "learned"])
def test_generation_with_kv_cache_equals_one_causal_pass(positions) -> None:
    torch.manual_seed(1)
    layer = MultiHeadAttention(24, 4, kv_heads=2, positions=positions, causal=True, max_len=64).double()
    prompt = torch.randn(2, 5, 24, dtype=torch.float64)
    fed = generate(layer, prompt, steps=6)
    full = layer(fed)
    # Replay step by step: each step's output must equal the full pass at that position.
    cache = layer.new_cache(2, 11)
    outputs = [layer(fed[:, :5], cache=cache)] + [layer(fed[:, t : t + 1], cache=cache) for t in range(5, 11)]
    assert torch.allclose(torch.cat(outputs, dim=1), full, atol=1e-10)


def test_generate_refuses_non_causal_and_cache_overflows() -> None:
    with pytest.raises(ValueError, match="generate needs a causal layer"):
        generate(MultiHeadAttention(8, 2), torch.randn(1, 3, 8), steps=2)
    cache = KVCache(1, 1, 4, 2, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"KV cache overflow: 5 tokens for max_len=4"):
        cache.append(torch.randn(1, 1, 5, 2), torch.randn(1, 1, 5, 2))


def test_layer_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match=r"positions must be None or one of"):
        MultiHeadAttention(8, 2, positions="absolute")
    with pytest.raises(ValueError, match=r"kv_heads must divide heads=4 \(allowed: \[1, 2, 4\]\), got 3"):
        MultiHeadAttention(8, 4, kv_heads=3)
    with pytest.raises(ValueError, match=r"positions='rope' is its own mechanism"):
        MultiHeadAttention(8, 2, positions="rope", mechanism="window", window=2)
    with pytest.raises(TypeError, match=r"query must be a torch\.Tensor"):
        MultiHeadAttention(8, 2)([1, 2])


def test_sinusoidal_table_is_vaswani() -> None:
    table = sinusoidal_table(50, 6)
    assert table[0].tolist() == pytest.approx([0, 1, 0, 1, 0, 1])
    assert table[7, 2].item() == pytest.approx(torch.sin(torch.tensor(7 / 10000 ** (2 / 6))).item(), abs=1e-6)


# Drop-in: torch.nn.MultiheadAttention with copied weights is the reference. float32 bounds:
# both compute in float32 with different association orders (SDPA's kernels vs nn's bmm), so
# outputs agree to a few ulps of their magnitude, 1e-5 absolute at these O(1) values.
ATOL = 1e-5


def nn_layer(embed: int = 16, heads: int = 4, **kwargs) -> torch.nn.MultiheadAttention:
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(embed, heads, **kwargs)
    with torch.no_grad():  # nn initializes biases to zero: random ones make a missed bias fail
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_()
    return mha.eval()


@pytest.mark.parametrize("backend", ["eager", "sdpa", "sdpa-math", "sdpa-flash", "tiled"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_drop_in_matches_nn_multihead_attention(backend, batch_first) -> None:
    mha = nn_layer(32, batch_first=batch_first)  # head_dim 8: sdpa-flash takes multiples of 8
    layer = MultiheadAttention.from_torch(mha, backend=backend).eval()
    shape = (2, 7, 32) if batch_first else (7, 2, 32)
    kv_shape = (2, 9, 32) if batch_first else (9, 2, 32)
    q, k, v = torch.randn(shape), torch.randn(kv_shape), torch.randn(kv_shape)
    out, weights = layer(q, k, v)
    want, want_weights = mha(q, k, v)
    assert torch.allclose(out, want, atol=ATOL)
    assert torch.allclose(weights, want_weights, atol=ATOL)
    out, weights = layer(q, k, v, need_weights=False)
    assert weights is None
    assert torch.allclose(out, want, atol=ATOL)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "sdpa-math"])
def test_drop_in_masks_follow_nn(backend) -> None:
    mha = nn_layer(kdim=6, vdim=10, batch_first=True)
    layer = MultiheadAttention.from_torch(mha, backend=backend).eval()
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 8, 6), torch.randn(2, 8, 10)
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[0, 5:] = True  # nn: True = ignore this key
    blocked = torch.rand(5, 8) > 0.6  # nn: True = not allowed
    blocked[:, 0] = False  # keep a key per row (a fully masked row is NaN in both)
    float_mask = torch.randn(2 * 4, 5, 8)  # nn's 3-D [B·H, Lq, Lk] additive form
    for kwargs in ({"key_padding_mask": padding}, {"attn_mask": blocked}, {"attn_mask": float_mask},
                   {"attn_mask": blocked, "key_padding_mask": padding}):  # fmt: skip
        out, weights = layer(q, k, v, average_attn_weights=False, **kwargs)
        want, want_weights = mha(q, k, v, average_attn_weights=False, **kwargs)
        assert torch.allclose(out, want, atol=ATOL), kwargs
        assert torch.allclose(weights, want_weights, atol=ATOL), kwargs
    assert (weights[0, :, :, 5:] == 0).all()


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_drop_in_is_causal_follows_nn(backend) -> None:
    """nn's ``is_causal`` hint with the causal mask it describes, on every path nn takes for it
    (SDPA's causal mode without weights or padding; the mask otherwise); without a mask refused."""
    mha = nn_layer(batch_first=True)
    layer = MultiheadAttention.from_torch(mha, backend=backend).eval()
    x = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True
    float_causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    bool_causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # nn: True = not allowed
    for mask in (float_causal, bool_causal):
        for kwargs in ({"need_weights": False}, {"need_weights": True}, {"key_padding_mask": padding}):
            out, weights = layer(x, x, x, attn_mask=mask, is_causal=True, **kwargs)
            want, want_weights = mha(x, x, x, attn_mask=mask, is_causal=True, **kwargs)
            assert torch.allclose(out, want, atol=ATOL), kwargs
            assert (weights is None) == (want_weights is None), kwargs
            if weights is not None:
                assert torch.allclose(weights, want_weights, atol=ATOL), kwargs
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        mha(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="is_causal=True is a hint that attn_mask is the causal mask; it needs"):
        layer(x, x, x, is_causal=True)


def test_drop_in_unbatched_input() -> None:
    mha = nn_layer()
    layer = MultiheadAttention.from_torch(mha, backend="sdpa").eval()
    q = torch.randn(7, 16)
    out, weights = layer(q, q, q)
    want, want_weights = mha(q, q, q)
    assert out.shape == (7, 16)
    assert torch.allclose(out, want, atol=ATOL)
    assert torch.allclose(weights, want_weights, atol=ATOL)


def test_sdpa_mask_convention_and_aliases() -> None:
    torch.manual_seed(4)
    layer = MultiHeadAttention(d_model=16, num_heads=4, backend="sdpa").eval()
    x = torch.randn(2, 6, 16)
    attend = torch.ones(6, 6, dtype=torch.bool).tril()  # SDPA: True = attend
    causal = MultiHeadAttention(16, 4, causal=True).eval()
    causal.load_state_dict(layer.state_dict())
    out, weights = layer(x, attn_mask=attend, need_weights=True)
    assert weights.shape == (2, 4, 6, 6)
    assert (weights.triu(1) == 0).all()
    assert torch.allclose(out, causal(x), atol=ATOL)
    # the (query, key, value) call: value differs from key
    kv, val = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    v_only = layer(x, kv, val)
    assert not torch.allclose(v_only, layer(x, kv), atol=1e-3)
    with pytest.raises(ValueError, match=r"embed_dim=16 and d_model=32 name one thing"):
        MultiHeadAttention(16, 4, d_model=32)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\) .*got 1.5"):
        MultiHeadAttention(16, 4, dropout=1.5)
    with pytest.raises(ValueError, match=r"key_padding_mask: expected \(2, 6\) \[B, Lk\], got \(2, 5\)"):
        layer(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask.* need backend in \['eager', 'sdpa'"):
        MultiHeadAttention(16, 4, backend="tiled")(x, attn_mask=attend)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "sdpa-math"])
def test_dropout_in_training_only(backend) -> None:
    torch.manual_seed(5)
    layer = MultiHeadAttention(16, 4, dropout=0.5, backend=backend)
    x = torch.randn(2, 32, 16)
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)  # a fresh draw each call
    layer.eval()
    assert torch.allclose(layer(x), layer(x))
    plain = MultiHeadAttention(16, 4).eval()
    plain.load_state_dict(layer.state_dict())
    assert torch.allclose(layer(x), plain(x), atol=ATOL)
    # Dropout scales kept weights by 1/(1 - p): the mean over many draws is the eval output.
    layer.train()
    with torch.no_grad():
        mean = torch.stack([layer(x) for _ in range(400)]).mean(0)
    assert torch.allclose(mean, plain(x), atol=0.05)  # Monte-Carlo error of 400 draws at p = 0.5
    with pytest.raises(ValueError, match=r"dropout in training need backend in"):
        MultiHeadAttention(16, 4, dropout=0.1, backend="tiled")(x)
