"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs")."""

from __future__ import annotations

import torch

from attnperf.case import Case
from attnperf.mechanisms.base import Family, Mechanism, dense_causal, expand_kv

#: Added to the normalizer, as fast-transformers does (fla uses 1e-10; see its backend).
LINEAR_EPS = 1e-6


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1, positive so the normalizer never vanishes."""
    return torch.nn.functional.elu(x) + 1


class Linear(Mechanism):
    """``out_i = Σ_j φ(q_i)·φ(k_j) v_j / (Σ_j φ(q_i)·φ(k_j) + ε)``, φ = elu + 1, ε = 1e-6.

    No softmax and no 1/√D scale (the paper's form). With ``causal`` the sums run over
    j ≤ i + Δ; computed as a running state it costs O(n·D²) instead of O(n²·D).
    The reference materializes the n × n similarity matrix, independently of the O(n·D²)
    forms the backends use.
    """

    name = "linear"
    family = Family.LINEAR
    summary = "linear attention, elu+1 feature map, eps 1e-6 (Katharopoulos et al. 2020)"
    options = ("causal",)

    def weights(self, q: torch.Tensor, k: torch.Tensor, case: Case, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``φ(q_i)·φ(k_j) / (Σ_j φ(q_i)·φ(k_j) + ε)``: rows sum to just under 1."""
        if rows is not None:
            q = q[:, :, rows.to(q.device)]
        sim = elu_feature_map(q) @ elu_feature_map(expand_kv(k, case.heads)).transpose(-1, -2)
        if case.causal:
            sim = sim * dense_causal(case, q.device, rows)
        return sim / (sim.sum(-1, keepdim=True) + LINEAR_EPS)
