"""The functional entry point and the layers: bad input, shapes, caches and weights."""

from __future__ import annotations

import pytest
import torch

from attnperf import Unsupported, attention
from attnperf.layers import KVCache, MultiHeadAttention, generate, sinusoidal_table


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
    with pytest.raises(ValueError, match="return_attention=True needs backend='eager'"):
        MultiHeadAttention(16, 2, backend="tiled")(torch.randn(1, 6, 16), return_attention=True)


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
    with pytest.raises(ValueError, match=r"heads \(4\) must be divisible by kv_heads \(3\)"):
        MultiHeadAttention(8, 4, kv_heads=3)
    with pytest.raises(ValueError, match=r"positions='rope' is its own mechanism"):
        MultiHeadAttention(8, 2, positions="rope", mechanism="window", window=2)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        MultiHeadAttention(8, 2)([1, 2])


def test_sinusoidal_table_is_vaswani() -> None:
    table = sinusoidal_table(50, 6)
    assert table[0].tolist() == pytest.approx([0, 1, 0, 1, 0, 1])
    assert table[7, 2].item() == pytest.approx(torch.sin(torch.tensor(7 / 10000 ** (2 / 6))).item(), abs=1e-6)
