from __future__ import annotations

import pytest
import torch

from attnperf.case import Case, make_inputs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"heads": 6, "kv_heads": 4},
            r"heads \(6\) must be divisible by kv_heads \(4\); allowed kv_heads: \[1, 2, 3, 6\]",
        ),
        ({"q_len": -3}, r"q_len must be an integer >= 1, got -3"),
        ({"kv_len": 0}, r"kv_len must be an integer >= 1, got 0"),
        ({"window": 0}, r"window must be an integer >= 1, got 0"),
        ({"window": -4}, r"window must be an integer >= 1"),
        ({"top_k": 0}, r"top_k must be an integer >= 1"),
        ({"dtype": "int8"}, r"dtype must be one of \['bfloat16', 'float16', 'float32', 'float64'\], got 'int8'"),
        ({"device": "tpu"}, r"device must be one of \['cpu', 'cuda'\]"),
        ({"head_dim": 2.5}, r"head_dim must be an integer >= 1, got 2.5"),
        ({"causal": True, "q_len": 9, "kv_len": 4}, r"causal attention needs q_len <= kv_len"),
        ({"batch": True}, r"batch must be an integer >= 1, got True"),
    ],
)
def test_bad_cases_name_the_field_and_the_allowed_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Case(**kwargs)


def test_defaults_and_derived_fields() -> None:
    case = Case(heads=8, kv_heads=2, q_len=5, kv_len=12)
    assert (case.n_kv_heads, case.k_len, case.offset) == (2, 12, 7)
    assert case.scale == pytest.approx(64**-0.5)
    assert Case(heads=8).n_kv_heads == 8
    assert Case(q_len=9).k_len == 9


def test_id_is_stable_and_names_what_differs() -> None:
    assert (
        Case(batch=4, heads=16, q_len=4096, head_dim=128, dtype="bfloat16", causal=True).id
        == "B4_H16_S4096_D128_bf16_causal"
    )
    assert Case(heads=8, kv_heads=2, q_len=1, kv_len=300, window=64).id == "B1_H8_KV2_Q1_K300_D64_f32_w64"


def test_inputs_are_seeded_shaped_and_never_zero() -> None:
    case = Case(heads=4, kv_heads=2, q_len=7, kv_len=9, head_dim=8, seed=3)
    q, k, v = make_inputs(case)
    assert q.shape == (1, 4, 7, 8)
    assert k.shape == v.shape == (1, 2, 9, 8)
    assert torch.equal(q, make_inputs(case)[0])
    assert not torch.equal(q, make_inputs(case, seed=4)[0])
    assert (q != 0).all()
    assert q.std() > 0.5
    assert make_inputs(case.replace(dtype="bfloat16"))[0].dtype == torch.bfloat16
