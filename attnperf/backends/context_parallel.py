"""Context parallelism: one attention's sequence sharded over the ranks of a ``torch.distributed`` group.

PyTorch's own ring attention (``torch.distributed.tensor.experimental``, as TorchTitan drove it
for SDPA): q, k and v are split along the sequence (``_context_parallel_shard``), each rank keeps
its query shard and sees every key/value shard in turn (``_templated_ring_attention``), merging the
partial outputs by their log-sum-exp; ``context_parallel_unshard`` gathers the output. Causal
attention uses the head-tail load-balanced layout (``_HeadTailLoadBalancer``): the sequence is cut
into 2N chunks and rank r holds chunks r and 2N−1−r, so every rank computes the same number of
(query, key) pairs. Full (non-causal) attention is sharded in order, without the balancer.

Where the ring's kernel comes from:

* **CUDA** (NCCL): the path TorchTitan used for SDPA. ``_enable_context_parallel_dispatcher``
  installs the ring as DTensor's handler of SDPA's flash, memory-efficient and cuDNN ATen ops; the
  shards enter ``F.scaled_dot_product_attention`` as ``DTensor.from_local(..., [Shard(2)])`` under
  ``sdpa_kernel([cuDNN, flash, efficient])`` and the ring runs whichever kernel SDPA picks.
* **CPU** (gloo): the CPU's SDPA calls ``aten._scaled_dot_product_flash_attention_for_cpu``, which
  has no context-parallel handler ("does not have a sharding strategy registered", torch 2.11 and
  2.13). The backend then calls the same ``_templated_ring_attention`` directly, with that CPU
  kernel as its op: sharding, the ring's rotation (functional collectives over gloo), the
  load-balanced causal schedule, the log-sum-exp merge and the unsharding are PyTorch's; only the
  DTensor dispatch and the GPU kernels are left to the GPU run.

The prepared closure returns this rank's output shard ``[B, H, L/N, D]`` (what a context-parallel
model keeps) and carries ``gather``, which unshards it into the ``[B, H, L, D]`` output on every
rank; :func:`attnperf.correctness.check` compares the gathered output with the reference.

Outside a process group of at least two ranks the backend is unsupported, with the command to
run instead: ``torchrun --nproc-per-node N -m attnperf cp check|bench`` (:mod:`attnperf.cpbench`).

Performance facts (``N`` ranks, ``c = L / 2N``; the FLOP model sums over the ranks, the memory
model is one rank's):

* executed pairs: full attention, every pair (each rank its L/N queries × L keys); causal, per
  rank the local causal square of 2c (whole 128-blocks, the kernels skip blocks above the
  diagonal) and 2c² pairs at each of the other N−1 steps (half the local queries against all the
  visiting keys, or all local queries against half of them): about L²/2 in all, as one GPU.
* peak extra memory per rank: the output shard in the input dtype and its float32 copy that the
  merge keeps, the merge's float32 temporaries (the block output, ``out − block_out`` and its
  scaled product: three more output shards in float32), the kernel's float32 log-sum-exp and the
  key/value traffic: with the default all-gather rotation every key and value of the sequence
  (``2·B·H_kv·L·D·e``) plus the local pair concatenated for sending; with all-to-all the local pair,
  the one being received and the concatenated send buffer (3 × ``2·B·H_kv·L/N·D·e``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from attnperf.analysis.flops import visited_block_pairs
from attnperf.backends.base import HALF_DTYPES, Backend, Runner
from attnperf.case import Case
from attnperf.mechanisms import Mechanism, SoftmaxMechanism

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

#: What the backend says outside a process group of two ranks or more.
NEEDS_TORCHRUN = "needs torchrun with WORLD_SIZE >= 2; run `torchrun --nproc-per-node N -m attnperf cp ...`"
#: The dimension of q, k and v that holds the sequence (SDPA's ``[B, H, L, D]``).
SEQ_DIM = 2
#: Ranks the performance models describe when no process group is formed (``attnperf analyze``
#: in one process): the two-GPU configuration the project measures.
DEFAULT_RANKS = 2


def world_size() -> int:
    """Ranks of the default process group, 0 when there is none."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 0


@functools.cache
def device_mesh(device_type: str) -> DeviceMesh:
    """The one-dimensional mesh over every rank of the default group (built once per process)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world_size(),), mesh_dim_names=("cp",))


def rotate_method() -> str:
    """How the ring moves keys and values: ``"allgather"`` (PyTorch's default) or ``"alltoall"``;
    set with ``torch.distributed.tensor.experimental._attention.set_rotate_method``."""
    from torch.distributed.tensor.experimental._attention import _cp_options, _RotateMethod

    return "alltoall" if _cp_options.rotate_method == _RotateMethod.ALL_TO_ALL else "allgather"


def _cpu_flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, is_causal: bool,
               scale: float | None = None, dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The CPU's flash kernel in the calling convention of the ring's op (``(out, lse)``)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, scale=scale
    )


def ring_runner(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
    """A closure computing this rank's output shard from its shards ``q``, ``k``, ``v`` (already in
    the layout :func:`shard` makes: load-balanced for causal), with ``gather`` attached."""
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.experimental._attention import (
        _cp_options,
        _enable_context_parallel_dispatcher,
        _HeadTailLoadBalancer,
        _templated_ring_attention,
        context_parallel_unshard,
    )
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ranks, cuda = world_size(), q.device.type == "cuda"
    mesh = device_mesh(q.device.type)
    balancer = _HeadTailLoadBalancer(case.q_len, ranks, q.device) if case.causal else None
    gqa = case.n_kv_heads != case.heads

    if cuda:
        _enable_context_parallel_dispatcher()
        kernels = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]

        def attend() -> torch.Tensor:
            dq, dk, dv = (DTensor.from_local(t, mesh, [Shard(SEQ_DIM)], run_check=False) for t in (q, k, v))
            with sdpa_kernel(kernels, set_priority=True):
                out = F.scaled_dot_product_attention(dq, dk, dv, is_causal=case.causal, scale=case.scale,
                                                     enable_gqa=gqa)  # fmt: skip
            return out.to_local()
    else:
        group = mesh.get_group()

        def attend() -> torch.Tensor:
            out, _lse, *_ = _templated_ring_attention(group, SEQ_DIM, _cpu_flash, q, k, v, is_causal=case.causal,
                                                      scale=case.scale)  # fmt: skip
            return out

    def run() -> torch.Tensor:
        # The ring reads this process-wide option at every call (a full and a causal runner may
        # alternate in one process): balanced exactly when the shards are.
        _cp_options.enable_load_balance = balancer is not None
        return attend()

    def gather(local: torch.Tensor) -> torch.Tensor:
        (full,) = context_parallel_unshard(mesh, [local], [SEQ_DIM], load_balancer=balancer)
        return full

    run.gather = gather  # type: ignore[attr-defined]
    return run


def shard(case: Case, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """This rank's shards of full-sequence tensors, in the ring's layout (head-tail for causal)."""
    from torch.distributed.tensor.experimental._attention import _context_parallel_shard, _HeadTailLoadBalancer

    mesh = device_mesh(tensors[0].device.type)
    balancer = _HeadTailLoadBalancer(case.q_len, world_size(), tensors[0].device) if case.causal else None
    return _context_parallel_shard(mesh, list(tensors), [SEQ_DIM] * len(tensors), load_balancer=balancer)


class ContextParallel(Backend):
    """PyTorch's ring attention over every rank of the default process group (module doc)."""

    name = "context-parallel"
    summary = "PyTorch context parallelism: ring attention over a torch.distributed group (torchrun)"
    mechanisms = frozenset({"full"})
    # The ring merges partial outputs in float32 (``_cp_options.convert_to_f32``): float64 inputs
    # would come back float32-accurate, so they are not offered.
    dtypes = ("float32", *HALF_DTYPES)
    head_dim_multiple = 8
    max_head_dim = 256
    supports_backward = False  # the ring has a backward; attnperf checks and times the forward only
    unsupported_errors = ("No available kernel", "No viable backend", "does not have a sharding strategy")

    def load(self) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            raise ImportError("torch.distributed is not available in this build of torch")
        import torch.distributed.tensor.experimental._attention  # noqa: F401  (the ring itself)

    def ranks(self) -> int:
        """The ranks the models describe: the process group's, else :data:`DEFAULT_RANKS`."""
        return world_size() or DEFAULT_RANKS

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        ranks = world_size()
        if ranks < 2:
            return [NEEDS_TORCHRUN]
        reasons = []
        if case.k_len != case.q_len:
            reasons.append(f"shards q, k and v alike: needs kv_len == q_len, got {case.k_len} != {case.q_len}")
        parts = 2 * ranks if case.causal else ranks
        if case.q_len % parts:
            layout = "the load-balanced causal layout needs" if case.causal else "even shards need"
            reasons.append(f"{layout} q_len divisible by {parts} ({ranks} ranks), got {case.q_len}")
        if case.device.startswith("cuda") and case.dtype not in HALF_DTYPES:
            reasons.append(f"dtype {case.dtype} unsupported on CUDA (the ring's kernels take bfloat16, float16)")
        return reasons

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        ql, kl, vl = shard(case, q, k, v)
        return ring_runner(case, ql, kl, vl)

    def executed_pairs(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        """Pairs multiplied on all ranks together (module doc)."""
        ranks = self.ranks()
        if not case.causal:
            return case.q_len * case.k_len
        chunk = -(-case.q_len // (2 * ranks))
        local = Case(q_len=2 * chunk, head_dim=case.head_dim, causal=True)
        diagonal = visited_block_pairs(mechanism, local, self.block_size or 1)
        return ranks * (diagonal + (ranks - 1) * 2 * chunk * chunk)

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        """One rank's peak extra bytes (module doc)."""
        ranks, e = self.ranks(), case.torch_dtype.itemsize
        b, h, d = case.batch, case.heads, case.head_dim
        rows = -(-case.q_len // ranks)
        shard_out = b * h * rows * d
        merge = shard_out * e + 4 * shard_out * 4 + 2 * b * h * rows * 4  # output, float32 merge, lse
        local_kv = 2 * b * case.n_kv_heads * -(-case.k_len // ranks) * d * e
        traffic = local_kv * (ranks + 1) if rotate_method() == "allgather" else 3 * local_kv
        return merge + traffic

    def describe(self) -> dict[str, Any]:
        """What the records of a context-parallel run state about its layout."""
        return {"ranks": self.ranks(), "rotate": rotate_method(), "causal_layout": "head-tail"}
