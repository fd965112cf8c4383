"""Projections frozen for CPU inference: stacked, and run by whichever kernel is fastest for their shape.

Why: a decode step multiplies a handful of rows (the batch) by every weight
matrix, and on a CPU the kernel behind ``F.linear`` (MKL on an unpacked
weight) is far from the machine's rate at that shape. Two kernels in torch
itself do better with the weight *prepacked* once (what ``torch.compile``'s
freezing does for CPU linears): oneDNN's inner product and MKL's packed GEMM.
Which one wins depends on the shape, the CPU and the BLAS build, and the
differences are large both ways (measured on a 2-core AMD EPYC, AVX2, one
thread: for 8 rows oneDNN ran a 512x16384 head 2.0x faster than ``F.linear``
but a 768x256 projection 1.3x slower, with a ~30 us fixed cost a call; MKL's
packed GEMM was fastest for a single row). So :class:`KernelChooser` times the
candidates on the real shape once, interleaved, and keeps the fastest; equal
shapes share the choice.

Every kernel computes the same float32 (or bfloat16) product; only summation
order differs. A frozen projection is a *copy*: later changes to the model's
parameters are not seen until it is frozen again.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

KERNELS = ("linear", "onednn", "mkl")
TUNE_ROUNDS = 3
TUNE_FLOPS = 1e7
MAX_TUNE_CALLS = 100
"""Calls per timing sample: about ``TUNE_FLOPS`` of work, at least 3 and at most ``MAX_TUNE_CALLS``."""


def _mkldnn_ops_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _mkl_ops_available() -> bool:
    return bool(getattr(torch._C, "has_mkl", False)) and hasattr(torch.ops.mkl, "_mkl_linear")


def candidate_kernels(weight: torch.Tensor) -> tuple[str, ...]:
    """The kernels this build can run for ``weight``: plain ``F.linear`` everywhere, packed ones on CPU."""
    if weight.device.type != "cpu":
        return ("linear",)
    found = ["linear"]
    if weight.dtype in (torch.float32, torch.bfloat16) and _mkldnn_ops_available():
        found.append("onednn")
    if weight.dtype == torch.float32 and _mkl_ops_available():
        found.append("mkl")
    return tuple(found)


class FrozenLinear:
    """``x @ weight.T`` for a fixed weight (several stacked by rows), run by one chosen kernel.

    ``rows`` is the number of rows a decode step multiplies (the batch); the
    chosen kernel runs calls with exactly that many rows. Other row counts (a
    prefill's ``batch x prompt`` rows) use ``F.linear``: there the work is
    compute-bound and MKL's plain GEMM ran at or above the packed kernels'
    rate (about 80 GFLOP/s a core on the machine above, 1024 rows).
    """

    def __init__(self, weights: list[torch.Tensor], rows: int, kernel: str = "linear") -> None:
        if len(weights) > 1:
            self.weight = torch.cat([w.detach() for w in weights])
        else:
            self.weight = weights[0].detach().clone()
        self.rows = rows
        self.kernel = "linear"
        self.packed: torch.Tensor | None = None
        self.use(kernel)

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``."""
        return tuple(self.weight.shape)  # type: ignore[return-value]

    def use(self, kernel: str, packed: torch.Tensor | None = None) -> None:
        """Switch to ``kernel``, packing the weight for it unless ``packed`` is given.

        A kernel that cannot run here raises RuntimeError (oneDNN bf16 on a
        CPU without AVX512-BF16 or AVX-NE-CONVERT, for one).
        """
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
        if packed is None and kernel == "onednn":
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, self.rows)
        elif packed is None and kernel == "mkl":
            packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, self.rows)
        self.kernel, self.packed = kernel, packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "linear" or x.numel() != self.rows * x.shape[-1]:
            return F.linear(x, self.weight)  # a prefill: many rows, compute-bound, where MKL's plain GEMM does best
        if self.kernel == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, None, self.rows)


@dataclass
class KernelChooser:
    """Picks the fastest kernel per ``(out, in, rows, dtype)`` by timing, once per shape.

    ``tune=False`` keeps ``F.linear`` everywhere (plain weights, as
    ``torch.compile`` wants them). ``choices`` records what was picked and
    ``timings`` the medians (microseconds a call) it was picked on.
    """

    tune: bool = True
    choices: dict[tuple, str] = field(default_factory=dict)
    timings: dict[tuple, dict[str, float]] = field(default_factory=dict)

    def freeze(self, weights: list[torch.Tensor], rows: int) -> FrozenLinear:
        """A frozen projection of ``weights`` (stacked) for ``rows``-row decode steps, on the fastest kernel."""
        frozen = FrozenLinear(weights, rows)
        if not self.tune:
            return frozen
        key = (*frozen.shape, rows, frozen.weight.dtype)
        if key not in self.choices:
            self.timings[key] = self._time(frozen)
            self.choices[key] = min(self.timings[key], key=self.timings[key].get)
        frozen.use(self.choices[key])
        return frozen

    @staticmethod
    def _time(frozen: FrozenLinear) -> dict[str, float]:
        """Median thread-CPU microseconds a call for each kernel that runs, interleaved over rounds.

        Thread CPU time rather than wall time: on a shared machine other
        processes' load stretches wall time but not the work a call does.
        """
        out_features, in_features = frozen.shape
        x = torch.randn(frozen.rows, 1, in_features, dtype=frozen.weight.dtype)
        work = 2 * frozen.rows * in_features * out_features
        calls = min(MAX_TUNE_CALLS, max(3, int(TUNE_FLOPS / work)))
        packs: dict[str, torch.Tensor | None] = {}
        for kernel in candidate_kernels(frozen.weight):
            try:
                frozen.use(kernel)
                frozen(x)  # the first call allocates and JIT-compiles
            except RuntimeError:
                continue  # cannot run on this CPU
            packs[kernel] = frozen.packed
        samples: dict[str, list[float]] = {kernel: [] for kernel in packs}
        for _ in range(TUNE_ROUNDS):
            for kernel, packed in packs.items():
                frozen.use(kernel, packed)
                start = time.thread_time()
                for _ in range(calls):
                    frozen(x)
                samples[kernel].append((time.thread_time() - start) / calls * 1e6)
        return {kernel: statistics.median(values) for kernel, values in samples.items()}
