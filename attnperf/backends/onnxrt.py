"""ONNX Runtime: the eager attention exported with ``torch.onnx`` and run by an inference session,
one backend per execution provider so that the providers can be compared side by side.

``prepare`` wraps the mechanism's eager computation (the same code as the ``eager`` backend:
mask, bias and RoPE tables become constants of the graph) in a module, exports it with the
``torch.export``-based exporter (one graph per shape, a few seconds each) and opens a session on
the backend's one provider:

* ``onnxruntime``: the CPU provider (float32; the name of the single backend this once was, so
  its CPU history continues);
* ``onnxruntime-cuda``: the CUDA provider, float32 and float16;
* ``onnxruntime-trt``: the TensorRT provider, float32 and float16, with the CUDA provider behind
  it for the nodes TensorRT does not take (ONNX Runtime's documented set-up).

The graph is exported in the case's dtype, so float16 is FP16 throughout. ONNX Runtime quietly
falls back to the CPU when a provider's libraries fail to load; a session whose first provider is
not the backend's is refused rather than timed under the wrong name. CPU inputs are handed over as
NumPy views; CUDA inputs through I/O binding, so the timed call is the session run alone.

With ``ATTNPERF_KEEP_ONNX=DIR`` in the environment (``attnperf check`` / ``sweep --keep-onnx DIR``
set it for the command, and a child process inherits it), every exported graph is also written to
``DIR/<mechanism>_<case id>_<backend>.onnx`` (the case id holds the shape, dtype and options), for
inspection in Netron or ``onnx.load``. An environment variable, as the compile caches are set, so
that the one seam reaches every process that prepares a point.

Why a provider is missing is data (:attr:`OnnxRuntime.install_hint`, :attr:`OnnxRuntime.install_detail`):
the PyPI ``onnxruntime`` wheel is CPU-only, and ``attnperf list`` says what to install for the GPU rows.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner, Unsupported
from attnperf.backends.eager import eager_linear, eager_softmax
from attnperf.backends.sdpa import SOFTMAX_MECHANISMS
from attnperf.case import Case
from attnperf.mechanisms import Mechanism, SoftmaxMechanism, get_mechanism
from attnperf.mechanisms.base import expand_kv

#: The folder every exported graph is kept in, when set.
KEEP_ONNX_ENV = "ATTNPERF_KEEP_ONNX"


@contextlib.contextmanager
def keeping_graphs(folder: str | Path | None) -> Iterator[None]:
    """Keep every graph exported while the block runs in ``folder`` (None: as the environment says);
    the environment is restored after, so one command's folder never leaks into the next."""
    if folder is None:
        yield
        return
    before = os.environ.get(KEEP_ONNX_ENV)
    os.environ[KEEP_ONNX_ENV] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(KEEP_ONNX_ENV, None)
        else:
            os.environ[KEEP_ONNX_ENV] = before


def keep_graph(model: bytes, mechanism: Mechanism, case: Case, backend: str) -> Path | None:
    """Write ``model`` to the folder :data:`KEEP_ONNX_ENV` names (created on first use); its path, or
    None when no folder is set."""
    folder = os.environ.get(KEEP_ONNX_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{mechanism.name}_{case.id}_{backend}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return path


class AttentionGraph(torch.nn.Module):
    """The eager computation of one mechanism on one case, as a module to export."""

    def __init__(self, mechanism: Mechanism, case: Case, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.mechanism, self.case = mechanism, case
        self.transform = None
        if isinstance(mechanism, SoftmaxMechanism):
            self.register_buffer("mask", mechanism.dense_mask(case, device))
            self.register_buffer("bias", mechanism.dense_bias(case, device, dtype))
            self.transform = mechanism.qk_transform(case, device, dtype)  # eager: export traces no Triton launch

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads = self.case.heads
        if not isinstance(self.mechanism, SoftmaxMechanism):
            return eager_linear(q, expand_kv(k, heads), expand_kv(v, heads), self.case)
        if self.transform is not None:
            q, k = self.transform(q, k)
        return eager_softmax(q, expand_kv(k, heads), expand_kv(v, heads), self.case.scale, self.mask, self.bias)


class OnnxRuntime(Backend):
    """The CPU execution provider; the base of the per-provider backends below."""

    name = "onnxruntime"
    summary = "torch.onnx export of the eager attention, run by ONNX Runtime's CPU provider"
    mechanisms = SOFTMAX_MECHANISMS | {"linear"}
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    # The CPU provider has no float16 MatMul/Softmax kernels, and bfloat16 lacks CPU kernels for
    # several of the graph's operators.
    dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    supports_backward = False
    compiles_per_shape = True  # one export per shape
    block_size = None  # the exported eager graph materializes every score
    own_cpu_allocator = True  # ONNX Runtime's CPU arena keeps its memory between runs
    #: The session's execution providers, in ONNX Runtime's order of preference; the first is the
    #: one this backend stands for, the rest take the nodes it declines.
    providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)
    #: What to install when the provider is missing ...
    install_hint: ClassVar[str] = "onnxruntime"
    #: ... which files, and their size where it was read from the package index (None: nothing to add).
    install_detail: ClassVar[str | None] = None

    ort: Any = None

    def load(self) -> None:
        import onnxruntime
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

        self.ort = onnxruntime

    def provider_reason(self) -> str | None:
        """Why this backend's provider is missing from this ONNX Runtime build, or None."""
        available = self.ort.get_available_providers()
        if self.providers[0] in available:
            return None
        detail = f"{self.install_detail}; " if self.install_detail else ""
        build = f"this onnxruntime {self.ort.__version__} build has no {self.providers[0]}"
        return f"needs {self.install_hint} ({detail}{build})"

    def not_supported_reasons(self, mechanism: Mechanism, case: Case, *, backward: bool = False) -> list[str]:
        """Every reason, the missing provider included even when the case has other reasons too
        (``attnperf list`` on a CPU machine then says both "runs on cuda only" and what to install)."""
        reasons = super().not_supported_reasons(mechanism, case, backward=backward)
        if self.library_reason is None and (why := self.provider_reason()) is not None:
            reasons.append(why)
        return reasons

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        return self.session_runner(AttentionGraph(mechanism, case, q.device, q.dtype), case, q, k, v)

    def prepare_linear(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        return self.session_runner(AttentionGraph(get_mechanism("linear"), case, q.device, q.dtype), case, q, k, v)

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.eager_softmax_peak(mechanism, case)  # the eager graph (analysis.memory says how far)

    def linear_peak_bytes(self, case: Case) -> int:
        return memory.eager_linear_peak(case)

    def session_runner(
        self, graph: AttentionGraph, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        """Export ``graph`` and return a closure running it in an ONNX Runtime session."""
        self.load()
        graph = graph.eval()
        buffer = io.BytesIO()
        try:
            torch.onnx.export(
                graph, (q.detach(), k.detach(), v.detach()), buffer, dynamo=True, verbose=False,
                input_names=["q", "k", "v"], output_names=["out"],
            )  # fmt: skip
        except Exception as exc:  # the exporter's many failure types all mean "cannot export this"
            raise Unsupported(f"torch.onnx export failed: {str(exc).strip().splitlines()[0]}") from exc
        keep_graph(buffer.getvalue(), graph.mechanism, case, self.name)
        session = self.ort.InferenceSession(buffer.getvalue(), providers=list(self.providers))
        if session.get_providers()[0] != self.providers[0]:  # a provider whose libraries failed to load
            running = ", ".join(session.get_providers())
            raise Unsupported(f"onnxruntime could not start {self.providers[0]} (the session runs on {running}); "
                              "its log names the library it could not load")  # fmt: skip
        if case.device == "cpu":
            feeds = {"q": q.detach().numpy(), "k": k.detach().numpy(), "v": v.detach().numpy()}
            return lambda: torch.from_numpy(session.run(None, feeds)[0])
        out = torch.empty_like(q)
        binding = session.io_binding()
        for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
            bind = binding.bind_output if name == "out" else binding.bind_input
            bind(
                name,
                "cuda",
                t.device.index or 0,
                torch.empty((), dtype=t.dtype).numpy().dtype,
                tuple(t.shape),
                t.data_ptr(),
            )

        def run_bound() -> torch.Tensor:
            session.run_with_iobinding(binding)
            return out

        return run_bound


class OnnxRuntimeCuda(OnnxRuntime):
    """ONNX Runtime's CUDA execution provider: FP16 with ``--dtype float16``."""

    name = "onnxruntime-cuda"
    summary = "torch.onnx export of the eager attention, run by ONNX Runtime's CUDA provider (FP16 or FP32)"
    devices = ("cuda",)
    # bfloat16 is left out: the provider lacks bfloat16 kernels for several of the graph's operators.
    dtypes = ("float32", "float16")
    own_cpu_allocator = False
    # The provider allocates from its own CUDA arena, which torch's allocator statistics do not see.
    own_cuda_allocator = True
    own_cuda_stream = True  # the provider runs on its own stream (no user_compute_stream is given)
    providers = ("CUDAExecutionProvider",)
    # PyPI's onnxruntime is the CPU build; the GPU build is another package, with CUDA 13 wheels
    # from 1.31 (pip download --no-deps onnxruntime-gpu==1.31.1: 255.6 MB for CPython 3.11, x86_64).
    install_hint = "onnxruntime-gpu"
    install_detail = "the 1.31.1 wheel for CUDA 13 is 256 MB"
    #: The most elements one tensor of the exported graph may hold on this provider. At 16k tokens
    #: and 16 heads (4.3·10⁹ scores, float16) its Cast of the scores stopped an H100 with an illegal
    #: memory access (onnxruntime-gpu 1.31.1), which poisons the process's CUDA context; at 4k
    #: (2.7·10⁸) it ran. The limit sits where 32-bit element offsets end; between the two, 8k
    #: (1.1·10⁹) was not run.
    max_elements: ClassVar[int] = 2**31 - 1

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        largest = largest_tensor(mechanism, case)
        if largest is not None and largest[1] > self.max_elements:
            name, elements = largest
            return [f"the exported graph's {name} hold {elements:,} elements, past 2³¹ − 1, where ONNX Runtime's "
                    "CUDA provider stopped with an illegal memory access"]  # fmt: skip
        return []


def largest_tensor(mechanism: Mechanism, case: Case) -> tuple[str, int] | None:
    """The exported eager graph's largest intermediate that grows with the length: the scores
    (B·H·Lq·Lk) of a softmax mechanism, causal linear attention's running states (B·H·Lk·D·D);
    None when none grows past O(n·D)."""
    if isinstance(mechanism, SoftmaxMechanism):
        return "scores (B·H·Lq·Lk)", case.batch * case.heads * case.q_len * case.k_len
    if case.causal:
        return "running states (B·H·Lk·D·D)", case.batch * case.heads * case.k_len * case.head_dim**2
    return None


class OnnxRuntimeTensorRT(OnnxRuntimeCuda):
    """ONNX Runtime's TensorRT execution provider (an engine built per shape at session start), with
    the CUDA provider for the nodes TensorRT declines. FP16 with ``--dtype float16``: the graph is
    exported in float16, so no precision flag of TensorRT's is needed."""

    name = "onnxruntime-trt"
    summary = "torch.onnx export of the eager attention, run by ONNX Runtime's TensorRT provider (FP16 or FP32)"
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    # The provider loads TensorRT 10 at session start. PyPI's tensorrt-cu13 is an sdist whose libraries
    # come from NVIDIA's own index, so pip download --no-deps does not give their size here.
    install_hint = "onnxruntime-gpu and TensorRT 10's libraries"
    install_detail = (
        "libnvinfer.so.10 and libnvonnxparser.so.10 from the tensorrt-cu13 10.x wheels, size not measured; "
        "onnxruntime-gpu's 1.31.1 wheel for CUDA 13 is 256 MB"
    )
