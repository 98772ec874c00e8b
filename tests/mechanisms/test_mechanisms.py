"""The conventions each mechanism writes down, checked against hand-made expectations.

These tests pin the *definitions* (masks, slopes, rotations, tie rules) independently of the
index-function machinery the references and backends share.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnperf.case import Case, make_inputs
from attnperf.catalog import VARIANTS
from attnperf.mechanisms import MECHANISMS, SoftmaxMechanism, get_mechanism
from attnperf.mechanisms.linear import LINEAR_EPS, elu_feature_map
from attnperf.mechanisms.positional import alibi_slopes, rope_tables, rotate_half_rope
from attnperf.mechanisms.sparse import bigbird_blocks, bigbird_random_tokens, stride_of, topk_keep


def mask_of(name: str, **kwargs: object) -> torch.Tensor:
    mech = get_mechanism(name)
    assert isinstance(mech, SoftmaxMechanism)
    case = Case(**kwargs)  # type: ignore[arg-type]
    mech.validate(case)
    mask = mech.dense_mask(case, "cpu")
    return torch.ones(case.q_len, case.k_len, dtype=torch.bool) if mask is None else mask


def brute(q_len: int, k_len: int, allowed: object) -> torch.Tensor:
    return torch.tensor([[bool(allowed(i, j)) for j in range(k_len)] for i in range(q_len)])  # type: ignore[operator]


def test_causal_is_bottom_right() -> None:
    # A single decode query sees every key (SDPA's top-left is_causal would show it key 0 only).
    assert mask_of("full", q_len=1, kv_len=5, causal=True).tolist() == [[True] * 5]
    assert torch.equal(mask_of("full", q_len=3, kv_len=5, causal=True), brute(3, 5, lambda i, j: j <= i + 2))
    assert torch.equal(mask_of("decode", q_len=2, kv_len=4), brute(2, 4, lambda i, j: j <= i + 2))


def test_causal_window_is_mistral_w_keys_including_self() -> None:
    # HF sliding_window=3 == flash-attn window_size=(2, 0): each query sees itself and 2 before.
    got = mask_of("window", q_len=6, window=3, causal=True)
    assert torch.equal(got, brute(6, 6, lambda i, j: i - 2 <= j <= i))
    assert got.sum(-1).tolist() == [1, 2, 3, 3, 3, 3]


def test_symmetric_window_is_longformer_centred_band() -> None:
    got = mask_of("window", q_len=7, window=4)  # w = 4 total: 2 on each side
    assert torch.equal(got, brute(7, 7, lambda i, j: abs(i - j) <= 2))


def test_window_aligns_queries_to_the_end_of_the_keys() -> None:
    got = mask_of("window", q_len=2, kv_len=6, window=2, causal=True)
    assert torch.equal(got, brute(2, 6, lambda i, j: i + 4 - 1 <= j <= i + 4))


def test_strided_matches_child_et_al() -> None:
    got = mask_of("strided", q_len=12, stride=4, causal=True)
    want = brute(12, 12, lambda i, j: j <= i and ((i - j) < 4 or (i - j) % 4 == 0))
    assert torch.equal(got, want)
    both_sides = mask_of("strided", q_len=9, stride=3)
    assert torch.equal(both_sides, brute(9, 9, lambda i, j: abs(i - j) < 3 or (i - j) % 3 == 0))


def test_stride_defaults_to_round_sqrt_n() -> None:
    assert stride_of(Case(q_len=100)) == 10
    assert stride_of(Case(q_len=1)) == 1
    assert stride_of(Case(q_len=4, kv_len=50)) == 7  # of the keys: round(7.07)
    assert stride_of(Case(q_len=100, stride=3)) == 3
    assert torch.equal(mask_of("strided", q_len=16, causal=True), mask_of("strided", q_len=16, stride=4, causal=True))


def test_strided_columns_are_the_masks_scripts_pattern() -> None:
    got = mask_of("strided_columns", q_len=12, stride=4, causal=True)
    assert torch.equal(got, brute(12, 12, lambda i, j: j <= i and j % 4 == 0))
    assert torch.equal(mask_of("strided_columns", q_len=9, stride=3), brute(9, 9, lambda i, j: j % 3 == 0))
    # decode-style alignment: queries are the last positions of the keys
    assert torch.equal(
        mask_of("strided_columns", q_len=2, kv_len=10, stride=4, causal=True),
        brute(2, 10, lambda i, j: j <= i + 8 and j % 4 == 0),
    )


def test_fixed_is_child_et_al_own_block_plus_summary_columns() -> None:
    got = mask_of("fixed", q_len=12, stride=4, num_global=1, causal=True)
    assert torch.equal(got, brute(12, 12, lambda i, j: j <= i and (i // 4 == j // 4 or j % 4 == 3)))
    two = mask_of("fixed", q_len=10, stride=5, num_global=2)
    assert torch.equal(two, brute(10, 10, lambda i, j: i // 5 == j // 5 or j % 5 >= 3))


def test_bigbird_tokens_are_window_global_and_seeded_random() -> None:
    case = Case(q_len=40, window=6, num_global=2, num_random=3, seed=5)
    table = bigbird_random_tokens(case)
    assert torch.equal(table, bigbird_random_tokens(case)), "same seed, same tokens, every call"
    assert not torch.equal(table, bigbird_random_tokens(case.replace(seed=6)))
    for p in range(40):
        picked = set(table[p].nonzero().flatten().tolist())
        seen = {j for j in range(40) if abs(j - p) <= 3 or j < 2}
        assert len(picked) == 3, f"row {p}: {sorted(picked)}"
        assert not picked & seen, f"row {p}: random tokens must be new keys"
    got = mask_of("bigbird_tokens", q_len=40, window=6, num_global=2, num_random=3, seed=5)
    want = brute(40, 40, lambda i, j: abs(i - j) <= 3 or i < 2 or j < 2 or bool(table[i, j]))
    assert torch.equal(got, want)
    causal = mask_of("bigbird_tokens", q_len=40, window=6, num_global=2, num_random=3, seed=5, causal=True)
    assert torch.equal(causal, want & brute(40, 40, lambda i, j: j <= i))


def test_bigbird_blocks_are_local_global_and_seeded_random() -> None:
    case = Case(q_len=64, block=8, num_global=1, num_random=2, seed=5)
    table = bigbird_blocks(case)
    assert torch.equal(table, bigbird_blocks(case)), "same seed, same blocks, every call"
    assert not torch.equal(table, bigbird_blocks(case.replace(seed=6)))
    nb = 8
    assert table[0].all(), "global block row"
    assert table[:, 0].all(), "global block column"
    for qb in range(1, nb):
        local = {kb for kb in range(nb) if abs(kb - qb) <= 1} | {0}
        extra = {kb for kb in range(nb) if table[qb, kb]} - local
        assert local <= {kb for kb in range(nb) if table[qb, kb]}
        assert len(extra) == min(2, nb - len(local)), f"block row {qb}: {len(extra)} random blocks"
    token_mask = mask_of("bigbird", q_len=64, block=8, num_global=1, num_random=2, seed=5)
    assert torch.equal(token_mask, brute(64, 64, lambda i, j: bool(table[i // 8, j // 8])))


def test_alibi_slopes_follow_press_et_al_for_any_head_count() -> None:
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]
    # 12 heads: the 8 slopes of 8, then slopes 1, 3, 5, 7 of 16 (2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5).
    want = [2.0**-k for k in range(1, 9)] + [2.0 ** -(0.5 + k) for k in range(4)]
    assert alibi_slopes(12).tolist() == pytest.approx(want)
    assert alibi_slopes(1).tolist() == [2.0**-8]
    assert len(alibi_slopes(5)) == 5
    assert (alibi_slopes(5) > 0).all()


def test_alibi_bias_penalizes_distance() -> None:
    mech = get_mechanism("alibi")
    assert isinstance(mech, SoftmaxMechanism)
    case = Case(heads=2, q_len=3, kv_len=4, causal=True)
    bias = mech.dense_bias(case, "cpu", torch.float64)
    assert bias is not None
    # head 0 slope 2^-4 (H=2: 2^(-8k/2)); query 0 sits at key position 1.
    assert bias[0, 0].tolist() == pytest.approx([-(2**-4), 0.0, -(2**-4), -2 * 2**-4])


def test_rope_is_half_rotation_as_complex_multiplication() -> None:
    d, positions = 8, torch.arange(5)
    x = torch.randn(5, d, dtype=torch.float64)
    cos, sin = rope_tables(positions, d, torch.float64)
    got = rotate_half_rope(x, cos, sin)
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[:, : d // 2], x[:, d // 2 :]) * torch.exp(1j * positions[:, None] * theta)
    assert torch.allclose(got, torch.cat([z.real, z.imag], dim=-1))


def test_rope_scores_depend_only_on_relative_position() -> None:
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    cos, sin = rope_tables(torch.arange(20), 8, torch.float64)

    def score(i: int, j: int) -> float:
        return float(rotate_half_rope(q, cos[i], sin[i]) @ rotate_half_rope(k, cos[j], sin[j]))

    assert score(5, 2) == pytest.approx(score(15, 12))
    assert score(5, 2) != pytest.approx(score(5, 3))


def test_topk_ties_keep_the_lower_key_index() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0, 3.0, 0.0]])
    assert topk_keep(scores, 2).tolist() == [[False, True, False, True, False, False]]
    assert topk_keep(scores, 4).tolist() == [[False, True, True, True, True, False]]


def test_topk_reference_attends_to_exactly_k_keys() -> None:
    case = Case(heads=2, q_len=9, kv_len=13, head_dim=4, top_k=3)
    q, k, _ = make_inputs(case)
    weights = get_mechanism("topk").weights(q.double(), k.double(), case)
    assert ((weights > 0).sum(-1) == 3).all()
    assert torch.allclose(weights.sum(-1), torch.ones(2, 9, dtype=torch.float64))


def test_linear_reference_equals_the_recurrent_form() -> None:
    case = Case(heads=2, q_len=5, kv_len=7, head_dim=4, causal=True)
    q, k, v = (t.double() for t in make_inputs(case))
    got = get_mechanism("linear").reference(q, k, v, case)
    state, z, want = torch.zeros(1, 2, 4, 4, dtype=torch.float64), torch.zeros(1, 2, 4, dtype=torch.float64), []
    for t in range(7):  # the RNN of Katharopoulos et al.: S_t = S_{t-1} + φ(k_t) v_tᵀ
        state = state + elu_feature_map(k[:, :, t])[..., :, None] * v[:, :, t][..., None, :]
        z = z + elu_feature_map(k[:, :, t])
        if t >= 2:  # queries sit at positions 2 … 6
            fq = elu_feature_map(q[:, :, t - 2])
            want.append((fq[..., None, :] @ state).squeeze(-2) / ((fq * z).sum(-1, keepdim=True) + LINEAR_EPS))
    assert torch.allclose(got, torch.stack(want, dim=2))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_gives_every_query_at_least_one_key(name: str) -> None:
    variant = VARIANTS[name]
    case = variant.case(97, heads=4, head_dim=8, window=5, top_k=3, stride=4, block=8)
    mech = get_mechanism(variant.mechanism)
    mech.validate(case)
    q, k, _v = make_inputs(case)
    weights = mech.weights(q.double(), k.double(), case)
    assert torch.isfinite(weights).all()
    assert ((weights > 0).sum(-1) >= 1).all()


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("window", {}, r"window: the window mechanism needs window="),
        ("topk", {"top_k": 20, "q_len": 8}, r"top_k must be between 1 and kv_len \(8\), got 20"),
        ("topk", {}, r"top_k: the topk mechanism needs top_k="),
        ("bigbird", {}, r"block: the bigbird mechanism needs block="),
        ("bigbird_tokens", {}, r"window: the bigbird_tokens mechanism needs window="),
        ("fixed", {"stride": 4, "num_global": 5}, r"num_global \(c, summary columns per block\) must be between 0"),
        ("rope", {"head_dim": 7}, r"head_dim must be even for RoPE, got 7"),
        (
            "window",
            {"window": 4, "q_len": 9, "kv_len": 3},
            r"window aligns queries to the end of the keys and needs q_len <= kv_len",
        ),
    ],
)
def test_mechanism_validation_names_the_option(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_mechanism(name).validate(Case(**kwargs))


def test_unknown_names_list_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"mechanism must be one of \[.*'full'.*\], got 'fancy'"):
        get_mechanism("fancy")


def test_reference_is_float64_on_cpu() -> None:
    case = Case(heads=2, q_len=3, head_dim=4, dtype="bfloat16")
    out = MECHANISMS["full"].reference(*make_inputs(case), case)
    assert out.dtype == torch.float64
    assert out.device.type == "cpu"
    assert math.isfinite(float(out.sum()))
