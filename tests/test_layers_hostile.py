"""The layers under hostile input: bad constructor arguments, wrong shapes, dtypes and masks, rows
that the masks leave without a key, and NaN inputs. Each error names the argument and what it allows."""

from __future__ import annotations

import math

import pytest
import torch

from attnperf import attention
from attnperf.layers import MASK_BACKENDS, MultiHeadAttention, MultiheadAttention

#: The backends that take per-call masks and run on the CPU (sdpa-efficient and sdpa-cudnn are CUDA-only).
CPU_MASK_BACKENDS = ["eager", "sdpa", "sdpa-math", "sdpa-flash"]
ATOL = 1e-5  # float32, O(1) values: both sides differ by association order only


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 4), {}, r"embed_dim must be an integer >= 1, got 0"),
        ((-8, 4), {}, r"embed_dim must be an integer >= 1, got -8"),
        ((8.0, 4), {}, r"embed_dim must be an integer >= 1, got 8.0"),
        ((True, 4), {}, r"embed_dim must be an integer >= 1, got True"),
        ((), {"d_model": 0, "num_heads": 4}, r"d_model must be an integer >= 1, got 0"),
        ((8, 0), {}, r"heads must be an integer >= 1, got 0"),
        ((), {"d_model": 8, "num_heads": -2}, r"num_heads must be an integer >= 1, got -2"),
        ((10, 4), {}, r"heads must divide embed_dim=10 \(allowed: \[1, 2, 5, 10\]\), got 4"),
        ((), {"d_model": 12, "num_heads": 5}, r"num_heads must divide d_model=12 \(allowed: \[1, 2, 3, 4, 6, 12\]\)"),
        ((8, 4), {"kv_heads": 0}, r"kv_heads must be an integer >= 1, got 0"),
        ((8, 4), {"kv_heads": 3}, r"kv_heads must divide heads=4 \(allowed: \[1, 2, 4\]\), got 3"),
        ((8, 4), {"kv_heads": 2.0}, r"kv_heads must be an integer >= 1, got 2.0"),
        ((8, 4), {"dropout": -0.1}, r"dropout must be a number in \[0, 1\) .*got -0.1"),
        ((8, 4), {"dropout": 1.0}, r"dropout must be a number in \[0, 1\) .*got 1.0"),
        ((8, 4), {"dropout": math.nan}, r"dropout must be a number in \[0, 1\) .*got nan"),
        ((8, 4), {"dropout": "0.1"}, r"dropout must be a number in \[0, 1\) .*got '0.1'"),
        ((8, 4), {"dropout": True}, r"dropout must be a number in \[0, 1\) .*got True"),
        ((8, 4), {"kdim": 0}, r"kdim must be an integer >= 1, got 0"),
        ((8, 4), {"vdim": -1}, r"vdim must be an integer >= 1, got -1"),
        ((8, 4), {"kv_dim": 0}, r"kv_dim must be an integer >= 1, got 0"),
        ((8, 4), {"max_len": 0}, r"max_len must be an integer >= 1, got 0"),
        ((8, 4), {"batch_first": "yes"}, r"batch_first must be True or False, got 'yes'"),
        ((8, 4), {"backend": "fast"}, r"backend must be one of \[.*'eager'.*'sdpa'.*\], got 'fast'"),
        ((8, 4), {"positions": "absolute"}, r"positions must be None or one of \['sinusoidal', 'learned', 'rope', "),
        ((8, 4), {"mechanism": "dense"}, r"mechanism must be one of \[.*'full'.*\], got 'dense'"),
        ((8, 4), {"dropot": 0.1}, r"unknown argument\(s\) \['dropot'\]; mechanism options are \['causal', 'window'"),
        ((8, 4), {"mechanism": "window", "window": 0}, r"window must be an integer >= 1, got 0"),
        ((8, 4), {"causal": "yes"}, r"causal must be True or False, got 'yes'"),
        ((8,), {}, r"embed_dim \(or d_model\) and heads \(or num_heads\) are required"),
        ((8, 4), {"d_model": 16}, r"embed_dim=8 and d_model=16 name one thing"),
    ],
)
def test_constructor_names_the_argument_and_what_it_allows(args, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(*args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 4), {}, r"embed_dim must be an integer >= 1, got 0"),
        ((8, 0), {}, r"num_heads must be an integer >= 1, got 0"),
        ((10, 4), {}, r"num_heads must divide embed_dim=10 \(allowed: \[1, 2, 5, 10\]\), got 4"),
        ((8, 4), {"kdim": 0}, r"kdim must be an integer >= 1, got 0"),  # nn accepts 0 and builds empty weights
        ((8, 4), {"vdim": -1}, r"vdim must be an integer >= 1, got -1"),
        ((8, 4), {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),  # nn accepts it: an all-zero attention
        ((8, 4), {"dropout": -1}, r"dropout must be a number in \[0, 1\)"),  # nn accepts it too
        ((8, 4), {"add_bias_kv": True}, r"add_bias_kv and add_zero_attn are not supported \(allowed: False\)"),
        ((8, 4), {"backend": "fast"}, r"backend must be one of \[.*\], got 'fast'"),
        ((8, 4), {"windw": 2}, r"unknown argument\(s\) \['windw'\]"),
    ],
)
def test_drop_in_constructor_names_nn_arguments(args, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        MultiheadAttention(*args, **kwargs)


def test_constructor_boundaries_are_accepted() -> None:
    """The edges of each allowed range build a working layer (the checks are not too strict)."""
    x = torch.randn(1, 3, 8)
    for layer in (
        MultiHeadAttention(8, 8, kv_heads=1, dropout=0.0, max_len=3, positions="learned"),
        MultiHeadAttention(d_model=8, num_heads=1, kv_heads=1, dropout=0.999, kdim=1, vdim=1),
        MultiheadAttention(8, 2, dropout=0, kdim=1, vdim=1, batch_first=True),
    ):
        out = layer.eval()(x, torch.randn(1, 4, layer.k_proj.in_features), torch.randn(1, 4, layer.v_proj.in_features))
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape == (1, 3, 8)


@pytest.mark.parametrize(
    ("batch_first", "call", "message"),
    [
        (True, lambda m: m(torch.randn(2, 10, 256)), r"query: expected \(batch, seq, 512\), got \(2, 10, 256\)$"),
        (True, lambda m: m(torch.randn(10, 512)), r"query: expected \(batch, seq, 512\), got \(10, 512\); one "
         r"unbatched sequence needs its batch dimension: query.unsqueeze\(0\)"),
        (False, lambda m: m(torch.randn(10, 512)), r"query: expected \(seq, batch, 512\), got \(10, 512\); .*"
         r"query.unsqueeze\(1\)"),
        (True, lambda m: m(torch.randn(2, 3, 10, 512)), r"query: expected \(batch, seq, 512\), got \(2, 3, 10, 512\)"),
        (True, lambda m: m(torch.randn(2, 10, 512), torch.randn(2, 7, 64)), r"key: expected \(2, seq, 512\), got "),
        (True, lambda m: m(torch.randn(2, 10, 512), torch.randn(3, 7, 512)),
         r"key: expected \(2, seq, 512\), got \(3,"),
        (False, lambda m: m(torch.randn(10, 2, 512), torch.randn(7, 3, 512)), r"key: expected \(seq, 2, 512\), got "),
        (True, lambda m: m(torch.randn(2, 10, 512), torch.randn(2, 7, 512), torch.randn(2, 6, 512)),
         r"value: expected \(2, 7, 512\), got \(2, 6, 512\)"),
        (True, lambda m: m(torch.randn(2, 10, 512, dtype=torch.float64)),
         r"query: dtype torch.float64, but the layer's parameters are torch.float32; convert one"),
        (True, lambda m: m(torch.randn(2, 10, 512), value=torch.randn(2, 10, 512)), r"value needs key"),
        (True, lambda m: m([[1.0]]), r"query must be a torch.Tensor \(batch, seq, E\), got list"),
        (True, lambda m: m(torch.randn(2, 10, 512), cache=m.new_cache(1, 16)),
         r"cache: made for \(batch, kv_heads, head_dim\) = \(1, 8, 64\), this call needs \(2, 8, 64\)"),
    ],
)  # fmt: skip
def test_inputs_are_named_with_the_shape_they_need(batch_first, call, message) -> None:
    layer = MultiHeadAttention(512, 8, batch_first=batch_first)
    with pytest.raises((ValueError, TypeError), match=message):
        call(layer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attn_mask": torch.ones(5, 6, dtype=torch.bool)},
         r"attn_mask: expected \(5, 7\) \[Lq, Lk\], \(8, 5, 7\) \[B·H, Lq, Lk\] "
         r"or \(2\|1, 4\|1, 5, 7\) \[B, H, Lq, Lk\], got \(5, 6\)"),
        ({"attn_mask": torch.ones(3, 4, 5, 7, dtype=torch.bool)}, r"attn_mask: expected .*got \(3, 4, 5, 7\)"),
        ({"attn_mask": torch.ones(7, 5, 7, dtype=torch.bool)}, r"attn_mask: expected .*got \(7, 5, 7\)"),
        ({"attn_mask": torch.ones(5, 7, dtype=torch.int64)},
         r"attn_mask: dtype must be torch.bool or a floating point type, got torch.int64"),
        ({"attn_mask": [[True]]}, r"attn_mask must be a torch.Tensor, got list"),
        ({"key_padding_mask": torch.zeros(2, 5, dtype=torch.bool)},
         r"key_padding_mask: expected \(2, 7\) \[B, Lk\], got \(2, 5\)"),
        ({"key_padding_mask": torch.zeros(2, 7, dtype=torch.uint8)},
         r"key_padding_mask: dtype must be torch.bool or a floating point type, got torch.uint8"),
    ],
)  # fmt: skip
def test_masks_are_named_with_the_shape_and_dtype_they_need(kwargs, message) -> None:
    layer = MultiHeadAttention(16, 4, backend="sdpa")
    with pytest.raises((ValueError, TypeError), match=message):
        layer(torch.randn(2, 5, 16), torch.randn(2, 7, 16), **kwargs)


def test_drop_in_takes_what_nn_takes_and_names_the_rest() -> None:
    """nn.MultiheadAttention takes batched 3-D and unbatched 2-D inputs (key and value of the same
    rank, an unbatched key_padding_mask [S], attn_mask [L, S] or [num_heads, L, S]); so does the drop-in."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4).eval()
    layer = MultiheadAttention.from_torch(mha, backend="sdpa").eval()
    q, kv = torch.randn(5, 16), torch.randn(7, 16)
    pad = torch.tensor([False] * 5 + [True] * 2)
    per_head = torch.rand(4, 5, 7) > 0.7
    per_head[..., 0] = False
    for kwargs in (
        {"key_padding_mask": pad},
        {"attn_mask": per_head},
        {"attn_mask": per_head, "key_padding_mask": pad},
    ):
        out, weights = layer(q, kv, kv, **kwargs)
        want, want_weights = mha(q, kv, kv, **kwargs)
        assert out.shape == (5, 16)
        assert weights.shape == (5, 7)
        assert torch.allclose(out, want, atol=ATOL)
        assert torch.allclose(weights, want_weights, atol=ATOL)
    with pytest.raises(ValueError, match=r"key: expected \(seq, 16\), got \(7, 1, 16\)"):
        layer(q, kv[:, None], kv[:, None])
    with pytest.raises(ValueError, match=r"key_padding_mask: expected \(7,\) \[S\] for an unbatched query, got"):
        layer(q, kv, kv, key_padding_mask=pad[None])
    with pytest.raises(ValueError, match=r"query: expected \(seq, batch, 16\) or unbatched \(seq, 16\), got \(16,\)"):
        layer(q[0], kv, kv)
    with pytest.raises(ValueError, match=r"query: expected \(seq, batch, 16\), got \(5, 2, 8\)"):
        layer(torch.randn(5, 2, 8), torch.randn(7, 2, 16), torch.randn(7, 2, 16))
    with pytest.raises(ValueError, match=r"attn_mask: dtype must be torch.bool or a floating point type"):
        layer(q, kv, kv, attn_mask=torch.zeros(5, 7, dtype=torch.int32))


# Rows the masks leave without a key. nn.MultiheadAttention (torch 2.13) gives NaN output and NaN
# weights with need_weights=True (its own softmax) and a zero attention output without weights
# (it calls SDPA), so the row's output is out_proj's bias. Before, the drop-in's answer depended on
# the backend (eager NaN, SDPA's kernels 0) and the weights it returned contradicted the output.


def empty_row_masks(batch: int, q_len: int, k_len: int) -> list[dict[str, torch.Tensor]]:
    """Masks in nn's convention (True = not allowed) that leave some query rows without a key."""
    pad = torch.zeros(batch, k_len, dtype=torch.bool)
    pad[0] = True  # every row of batch 0
    blocked = torch.zeros(q_len, k_len, dtype=torch.bool)
    blocked[2] = True  # row 2 of every batch
    additive = torch.zeros(q_len, k_len).masked_fill(blocked, float("-inf"))
    partial = torch.zeros(batch, k_len, dtype=torch.bool)
    partial[1, 3:] = True  # with `blocked[:, :3]` this empties every row of batch 1
    early = torch.zeros(q_len, k_len, dtype=torch.bool)
    early[:, :3] = True
    return [
        {"key_padding_mask": pad},
        {"attn_mask": blocked},
        {"attn_mask": additive},
        {"attn_mask": early, "key_padding_mask": partial},
    ]


def nn_layer(**kwargs) -> torch.nn.MultiheadAttention:
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True, **kwargs)  # head_dim 8: sdpa-flash's multiple
    with torch.no_grad():
        for name, p in mha.named_parameters():
            if "bias" in name:
                p.normal_()  # a missed bias (the empty rows' whole output) fails
    return mha.eval()


@pytest.mark.parametrize("backend", CPU_MASK_BACKENDS)
def test_drop_in_empty_rows_follow_nn_on_every_backend(backend) -> None:
    mha = nn_layer()
    layer = MultiheadAttention.from_torch(mha, backend=backend).eval()
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    for masks in empty_row_masks(2, 5, 6):
        out, weights = layer(q, kv, kv, average_attn_weights=False, **masks)
        want, want_weights = mha(q, kv, kv, average_attn_weights=False, **masks)
        empty = want.isnan().any(-1)
        assert empty.any(), masks  # the masks do empty some rows
        assert not empty.all(), masks  # and leave others
        assert torch.equal(out.isnan().any(-1), empty), masks
        assert torch.allclose(out, want, atol=ATOL, equal_nan=True), masks
        assert torch.allclose(weights, want_weights, atol=ATOL, equal_nan=True), masks
        # output and weights agree: a row is NaN in one exactly where it is NaN in the other
        assert torch.equal(weights.isnan().all(-1).any(1), empty), masks
        out, weights = layer(q, kv, kv, need_weights=False, **masks)
        want, _ = mha(q, kv, kv, need_weights=False, **masks)
        assert weights is None, masks
        assert not out.isnan().any(), masks
        assert torch.allclose(out, want, atol=ATOL), masks
        assert torch.allclose(out[empty], mha.out_proj.bias.expand(int(empty.sum()), -1), atol=ATOL), masks


def test_nn_fast_path_gives_nan_where_its_general_path_gives_zero() -> None:
    """The one place the drop-in departs from nn: nn's inference fast path (eval, no grad,
    batch_first, one tensor as query, key and value) gives NaN for empty rows without weights,
    where its general path gives 0. The drop-in keeps the general path's 0; if nn changes, this
    test says so."""
    mha = nn_layer()
    layer = MultiheadAttention.from_torch(mha, backend="sdpa").eval()
    x = torch.randn(2, 5, 32)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0] = True
    with torch.no_grad():
        fast, _ = mha(x, x, x, key_padding_mask=pad, need_weights=False)
        ours, _ = layer(x, x, x, key_padding_mask=pad, need_weights=False)
    general, _ = mha(x, x, x, key_padding_mask=pad, need_weights=False)  # grad enabled: no fast path
    assert fast[0].isnan().all()
    assert not general.isnan().any()
    assert torch.allclose(ours, general, atol=ATOL)


@pytest.mark.parametrize("backend", CPU_MASK_BACKENDS)
def test_layer_empty_rows_are_zero_on_every_backend(backend) -> None:
    """attnperf's layer: an empty row has zero weights and a zero attention output (SDPA's
    convention), on every backend, whether or not the weights are asked for."""
    torch.manual_seed(4)
    ref = MultiHeadAttention(32, 4, backend="eager").eval()
    layer = MultiHeadAttention(32, 4, backend=backend).eval()
    layer.load_state_dict(ref.state_dict())
    with torch.no_grad():
        layer.out_proj.bias.normal_()
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    for nn_masks in empty_row_masks(2, 5, 6):
        masks = dict(nn_masks)
        if "attn_mask" in masks and masks["attn_mask"].dtype == torch.bool:
            masks["attn_mask"] = ~masks["attn_mask"]  # this layer: SDPA's True = attend
        out, weights = layer(q, kv, **masks, need_weights=True)
        assert torch.equal(out, layer(q, kv, **masks))
        empty = weights.sum(-1) == 0  # [B, H, Lq]
        assert empty.any(), masks
        assert not out.isnan().any(), masks
        assert not weights.isnan().any(), masks
        rows = empty.all(1)  # the masks here empty a query row in every head
        assert torch.allclose(out[rows], layer.out_proj.bias.expand(int(rows.sum()), -1), atol=ATOL), masks
        assert torch.allclose(weights.sum(-1)[~empty], torch.ones(int((~empty).sum())), atol=ATOL), masks
        # the other rows are what the weights say: out_proj(weights @ v)
        v = layer.v_proj(kv).view(2, 6, 4, 8).transpose(1, 2)
        expected = layer.out_proj((weights @ v).transpose(1, 2).reshape(2, 5, 32))
        assert torch.allclose(out, expected, atol=ATOL), masks


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_empty_rows_stay_finite_with_dropout_in_training(backend) -> None:
    layer = MultiHeadAttention(32, 4, dropout=0.3, backend=backend)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0] = True
    out = layer(torch.randn(2, 5, 32), torch.randn(2, 6, 32), key_padding_mask=pad)
    assert not out.isnan().any()
    assert torch.allclose(out[0], layer.out_proj.bias.expand(5, -1), atol=ATOL)


@pytest.mark.parametrize("backend", sorted({"flex", "tiled", "onnxruntime"} - set(MASK_BACKENDS)))
def test_backends_without_per_call_masks_refuse_them(backend) -> None:
    layer = MultiHeadAttention(32, 4, backend=backend)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"attn_mask, key_padding_mask and dropout in training need backend in \["):
        layer(torch.randn(2, 5, 32), torch.randn(2, 6, 32), key_padding_mask=pad)


@pytest.mark.slow
def test_flex_turns_nan_in_q_or_k_into_finite_output() -> None:
    """Upstream behaviour of compiled flex_attention, stated in the Flex backend's docstring: NaN in
    q or k gives finite output (a query whose scores are all NaN gets 0), where eager and every other
    backend give NaN; NaN in v propagates in both. If flex starts propagating NaN, this fails and the
    docstring must change."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    for name in ("q", "k", "v"):
        inputs = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
        inputs[name][0, 0, 3, 2] = float("nan")
        eager = attention(inputs["q"], inputs["k"], inputs["v"], backend="eager")
        flex = attention(inputs["q"], inputs["k"], inputs["v"], backend="flex")
        poisoned = {"q": eager[0, 0, 3], "k": eager[0, 0], "v": eager[0, 0, :, 2]}[name]
        assert poisoned.isnan().all(), name
        if name == "v":
            assert torch.equal(flex.isnan(), eager.isnan())
        else:
            assert not flex.isnan().any(), name
        if name == "q":
            assert torch.equal(flex[0, 0, 3], torch.zeros(8))
        # the untouched batch/head rows agree
        assert torch.allclose(flex[0, 1], eager[0, 1], atol=ATOL), name


def test_functional_names_unknown_options() -> None:
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['wndow'\]; mechanism options are \['causal', "):
        attention(q, q, q, mechanism="window", wndow=3)


def test_autocast_inputs_of_another_dtype_are_not_refused() -> None:
    """Under autocast nn.Linear casts input and weight itself, so a bfloat16 input to a float32 layer is fine."""
    layer = MultiHeadAttention(16, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 5, 16, dtype=torch.bfloat16))
    assert out.shape == (2, 5, 16)
    assert out.dtype == torch.bfloat16
