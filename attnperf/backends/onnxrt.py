"""ONNX Runtime: the eager attention exported with ``torch.onnx`` and run by an inference session.

``prepare`` wraps the mechanism's eager computation (the same code as the ``eager`` backend:
mask, bias and RoPE tables become constants of the graph) in a module, exports it with the
``torch.export``-based exporter (one graph per shape, a few seconds each) and opens a session
with the best execution provider present: TensorRT, then CUDA for a CUDA case, the CPU
otherwise. CPU inputs are handed over as NumPy views; CUDA inputs through I/O binding, so the
timed call is the session run alone.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner, Unsupported
from attnperf.backends.eager import eager_linear, eager_softmax
from attnperf.backends.sdpa import SOFTMAX_MECHANISMS
from attnperf.case import Case
from attnperf.mechanisms import Mechanism, SoftmaxMechanism, get_mechanism
from attnperf.mechanisms.base import expand_kv

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class AttentionGraph(torch.nn.Module):
    """The eager computation of one mechanism on one case, as a module to export."""

    def __init__(self, mechanism: Mechanism, case: Case, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.mechanism, self.case = mechanism, case
        self.transform = None
        if isinstance(mechanism, SoftmaxMechanism):
            self.register_buffer("mask", mechanism.dense_mask(case, device))
            self.register_buffer("bias", mechanism.dense_bias(case, device, dtype))
            self.transform = mechanism.qk_transform(case, device, dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads = self.case.heads
        if not isinstance(self.mechanism, SoftmaxMechanism):
            return eager_linear(q, expand_kv(k, heads), expand_kv(v, heads), self.case)
        if self.transform is not None:
            q, k = self.transform(q, k)
        return eager_softmax(q, expand_kv(k, heads), expand_kv(v, heads), self.case.scale, self.mask, self.bias)


class OnnxRuntime(Backend):
    name = "onnxruntime"
    summary = "torch.onnx export of the eager attention, run by ONNX Runtime (CPU; CUDA/TensorRT when present)"
    mechanisms = SOFTMAX_MECHANISMS | {"linear"}
    # bfloat16 lacks CPU kernels for several of the graph's operators in ONNX Runtime.
    dtypes = ("float32", "float16")
    supports_backward = False
    compiles_per_shape = True  # one export per shape
    block_size = None  # the exported eager graph materializes every score
    own_cpu_allocator = True  # ONNX Runtime's CPU arena keeps its memory between runs

    ort: Any = None

    def load(self) -> None:
        import onnxruntime
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)

        self.ort = onnxruntime

    def providers(self, case: Case) -> list[str]:
        if case.device.startswith("cuda"):
            return [p for p in GPU_PROVIDERS if p in self.ort.get_available_providers()]
        return ["CPUExecutionProvider"]

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        if not self.providers(case):
            return ["onnxruntime has no CUDA or TensorRT execution provider here (install onnxruntime-gpu)"]
        if case.device == "cpu" and case.dtype == "float16":
            return ["float16 unsupported on ONNX Runtime's CPU provider (no float16 MatMul/Softmax kernels)"]
        return []

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
        session = self.ort.InferenceSession(buffer.getvalue(), providers=self.providers(case))
        if not case.device.startswith("cuda"):
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
