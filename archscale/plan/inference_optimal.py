"""The inference-aware optimum (Sardana et al. 2023, "Beyond Chinchilla-Optimal").

A model that will serve ``D_inf`` tokens over its life costs its training plus its serving. For a target
loss ``L(N, D) = target`` every ``N`` above the smallest that can reach it has exactly one ``D``
(``D(N) = (B / (target - E - A N^-alpha))^(1/beta)``), so the optimum is a one-dimensional search over
``N`` of

    total(N) = training(N, D(N)) + inference(N, D_inf)

Three cost models:

* ``flops``: training ``6 N D``, inference ``2 N D_inf`` (the paper's own accounting);
* ``gpu-hours``: training ``6 N D / (MFU x peak)``, inference ``D_inf / throughput(N)`` per GPU of the
  serving replica, with the throughput of a LLaMA-like reference shape at each ``N`` from archscale's cost
  model (:func:`serving_estimate`, the one call into it). ``search`` at the chosen ``N`` then picks the
  shape. The reference shapes are ones a ``tp``-way replica can serve (vLLM splits whole heads across GPUs):
  their query heads are a multiple of ``tp`` and of 4, and their KV heads the count nearest GQA 4 that ``tp``
  splits (:func:`kv_heads_for`), so ``--tp 8`` costs a real layout rather than refusing one ``plan`` invented;
* ``dollars``: the GPU-hours at a price per GPU-hour (``--gpu-price``, or a ``--gpu-file``'s ``usd_per_hour``).
  One price for training and serving makes it a constant factor: the optimum's ``N`` and ``D`` are those of
  ``gpu-hours``, and only the unit a reader budgets in changes.

Serving runs the workload's ``batch_size`` requests at once, or, under latency limits (:class:`Serving`'s
``limits``), each reference shape at the most requests up to that batch that meet them: a tighter limit lowers
the throughput of large shapes most (their decode steps are slowest), so it raises inference cost and moves
the optimum to smaller ``N``.

With ``D_inf = 0`` the optimum is the Chinchilla point for that loss, in closed form: ``A N^-alpha`` and
``B D^-beta`` split ``target - E`` in the ratio ``beta : alpha``.

Laws of N and D with no closed form (Kaplan, Farseer: ``fit``'s default may choose them) take the same route
numerically: ``D(N)`` by bisection in ``ln D`` (loss falls with D), the smallest ``N`` by bisection on the loss
at unlimited data, the Chinchilla point by minimising ``N D(N)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.fit.coverage import outside_sizes
from archscale.fit.fitted import FittedLaw
from archscale.plan.numeric_optimum import SEARCHED_LAWS, law_loss, minimum_on_grid
from archscale.serving.price import check_price

if TYPE_CHECKING:
    from archscale.serving.estimate import LatencyLimits

COSTS = ("flops", "gpu-hours", "dollars")
GPU_COSTS = ("gpu-hours", "dollars")  # costs that run on a GPU, so need a serving setup
UNITS = {"flops": "FLOPs", "gpu-hours": "GPU-hours", "dollars": "USD"}
SIZE_LAWS = ("chinchilla", "chinchilla-tied")  # closed forms; SEARCHED_LAWS are solved numerically
UNLIMITED = 1e40  # "as many tokens (or parameters) as you like", for a law's limit
BISECTIONS = 200  # halvings of a ln-range of about 90: far below float resolution
SEARCH_DECADES = 6.0  # N is searched from the smallest that reaches the target to 10^6 times it
GRID_POINTS = 600
SHAPE_POINTS = 48  # reference shapes over the searched range; log-log interpolation between them
ASPECT_RATIO = 128  # d_model / n_layers of the reference shapes (LLaMA-3.2-1B and LLaMA-3-8B use 128)
GQA_GROUP = 4


@dataclass
class Serving:
    """How inference is costed: the GPU, the workload shape, tensor parallelism, which tokens count, and the
    latency limits a replica must meet (None: every shape serves the workload's whole batch at once)."""

    gpu: Any
    workload: Any
    tp: int = 1
    counts: str = "total"  # total: prompt + generated tokens are D_inf; output: generated tokens only
    vocab: int = 128256
    limits: LatencyLimits | None = None

    def operating_point(self) -> str:
        """How each reference shape is served, in words: the plan's header and JSON say it."""
        batch = self.workload.batch_size
        if self.limits is None:
            return f"serving {batch} requests at once"
        return f"serving at the most requests up to {batch} with {self.limits.describe()}"

    def limits_json(self) -> dict[str, Any] | None:
        if self.limits is None:
            return None
        return {"tpot_ms": self.limits.tpot_ms, "ttft_ms": self.limits.ttft_ms, "statistic": self.limits.statistic_label}


@dataclass
class CostModel:
    """``flops``; ``gpu-hours`` with a training MFU and a :class:`Serving` setup; or ``dollars``: those GPU-hours
    at ``usd_per_gpu_hour``."""

    kind: str = "flops"
    mfu: float = 0.4
    serving: Serving | None = None
    usd_per_gpu_hour: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in COSTS:
            raise UserError(f"--cost {self.kind!r}: choose one of {', '.join(COSTS)}")
        if not 0 < self.mfu <= 1:
            raise UserError(f"--mfu must be a fraction in (0, 1], got {self.mfu}")
        if self.kind in GPU_COSTS and self.serving is None:
            raise UserError(f"--cost {self.kind} needs a GPU and a serving workload")
        if self.kind == "dollars" and self.usd_per_gpu_hour is None:
            raise UserError(f"--cost dollars needs a price: give --gpu-price (US dollars per GPU-hour), or a usd_per_hour "
                            f"for {self.serving.gpu.name} in a --gpu-file")
        if self.usd_per_gpu_hour is not None:
            self.usd_per_gpu_hour = check_price(self.usd_per_gpu_hour, "--gpu-price")

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    @property
    def on_gpus(self) -> bool:
        """Whether costs are GPU time (in hours or dollars) rather than FLOPs."""
        return self.kind in GPU_COSTS

    @property
    def per_gpu_hour(self) -> float:
        """What one GPU-hour counts as in this unit: its price for dollars, 1 for GPU-hours."""
        return self.usd_per_gpu_hour if self.kind == "dollars" else 1.0


@dataclass
class Optimum:
    """One point: parameters, tokens, and what it costs."""

    inference_tokens: float
    n: float
    d: float
    training: float
    inference: float
    operating_batch: int | None = None  # under latency limits: requests the reference shape nearest N serves at once

    @property
    def total(self) -> float:
        return self.training + self.inference

    def to_json(self) -> dict[str, Any]:
        return {"inference_tokens": self.inference_tokens, "N": self.n, "D": self.d, "tokens_per_param": self.d / self.n,
                "training_cost": self.training, "inference_cost": self.inference, "total_cost": self.total,
                "operating_batch": self.operating_batch}


@dataclass
class LifetimePlan:
    """The inference-aware optimum per inference volume, beside the Chinchilla point for the same loss."""

    target_loss: float
    cost: CostModel
    optima: list[Optimum]
    chinchilla: list[Optimum]  # the Chinchilla point, costed with the same inference volume
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        serving = self.cost.serving
        return {
            "target_loss": self.target_loss,
            "cost": self.cost.kind, "unit": self.cost.unit,
            "mfu": self.cost.mfu if self.cost.on_gpus else None,
            "usd_per_gpu_hour": self.cost.usd_per_gpu_hour if self.cost.kind == "dollars" else None,
            "serving": None if serving is None else {
                "gpu": serving.gpu.name, "tp": serving.tp, "batch_size": serving.workload.batch_size,
                "input_len": serving.workload.input_len, "output_len": serving.workload.output_len,
                "inference_tokens_count": serving.counts, "throughput_source": serving_profile(serving).label,
                "limits": serving.limits_json(), "operating_point": serving.operating_point()},
            "optima": [o.to_json() for o in self.optima],
            "chinchilla_point": [o.to_json() for o in self.chinchilla],
            "savings": [1 - o.total / c.total if math.isfinite(c.total) else None  # an unservable Chinchilla point
                        for o, c in zip(self.optima, self.chinchilla)],
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------
# the law's side: which (N, D) reach the target
# ---------------------------------------------------------------------------
def _size_params(fitted: FittedLaw) -> tuple[float, float, float, float, float]:
    if fitted.law.name not in SIZE_LAWS:
        raise UserError(f"{fitted.source}: the inference-aware optimum needs a law of N and D "
                        f"({', '.join(SIZE_LAWS + SEARCHED_LAWS)}), not {fitted.law.name}; fit one with --law chinchilla")
    p = fitted.params
    return p["E"], p["A"], p["B"], p["alpha"], p["alpha"] if fitted.law.name.endswith("-tied") else p["beta"]


def _searched(fitted: FittedLaw) -> bool:
    return fitted.law.name in SEARCHED_LAWS


def _loss(fitted: FittedLaw, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return law_loss(fitted.law, fitted.params, n, d)


def _bisect(decreasing, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Where ``decreasing(x)`` crosses zero between ``low`` and ``high`` (elementwise; ``x`` in logs)."""
    low, high = np.array(low, float), np.array(high, float)
    for _ in range(BISECTIONS):
        middle = 0.5 * (low + high)
        above = decreasing(middle) > 0
        low, high = np.where(above, middle, low), np.where(above, high, middle)
    return 0.5 * (low + high)


def check_target(fitted: FittedLaw, target_loss: float) -> None:
    """A target the law cannot plan for is one line naming ``--target-loss``: not a finite positive number; at or
    below the irreducible loss ``E`` (reached by no model, however large); or at or above the loss of a model of
    one parameter trained on unlimited data (reached by every size, so the "optimum" would be a fraction of a
    parameter)."""
    if not (math.isfinite(target_loss) and target_loss > 0):
        raise UserError(f"--target-loss {target_loss:g}: must be a finite positive number, the loss the model must "
                        "reach (e.g. 2.1)")
    if _searched(fitted):
        floor = float(_loss(fitted, np.array([UNLIMITED]), np.array([UNLIMITED]))[0])
        if not target_loss > floor:
            raise UserError(f"--target-loss {target_loss:g} is not above the loss {fitted.law.name} reaches with unlimited "
                            f"parameters and data ({floor:.4g}, {fitted.source}): choose a target above it")
    else:
        e = _size_params(fitted)[0]
        if not target_loss > e:
            raise UserError(f"--target-loss {target_loss:g} is not above the law's irreducible loss E = {e:.4g} "
                            f"({fitted.source}): no model reaches it; choose a target above {e:.4g}")
    ceiling = float(_loss(fitted, np.array([1.0]), np.array([UNLIMITED]))[0])
    if math.isfinite(ceiling) and target_loss >= ceiling:
        raise UserError(f"--target-loss {target_loss:g} is reached by every model of one parameter or more: the law "
                        f"gives {ceiling:.4g} at N = 1 with unlimited data ({fitted.source}), so there is no size to "
                        f"choose; give a target below {ceiling:.4g}")


def tokens_for_loss(fitted: FittedLaw, target_loss: float, n: np.ndarray) -> np.ndarray:
    """``D(N)`` with ``L(N, D) = target``; infinite where ``N`` alone already misses the target."""
    if _searched(fitted):
        n = np.asarray(n, float)
        reachable = _loss(fitted, n, np.full(n.shape, UNLIMITED)) < target_loss
        log_d = _bisect(lambda u: _loss(fitted, n, np.exp(u)) - target_loss, np.zeros(n.shape), np.full(n.shape, math.log(UNLIMITED)))
        return np.where(reachable, np.exp(log_d), np.inf)
    e, a_coef, b_coef, alpha, beta = _size_params(fitted)
    room = target_loss - e - a_coef * np.asarray(n, float) ** -alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(room > 0, (b_coef / np.where(room > 0, room, 1.0)) ** (1 / beta), np.inf)


def smallest_size(fitted: FittedLaw, target_loss: float) -> float:
    """Below this ``N`` no amount of data reaches the target (``A N^-alpha = target - E``)."""
    if _searched(fitted):
        return float(np.exp(_bisect(lambda u: _loss(fitted, np.exp(u), np.full(np.shape(u), UNLIMITED)) - target_loss,
                                    np.zeros(1), np.full(1, math.log(UNLIMITED))))[0])
    e, a_coef, _, alpha, _ = _size_params(fitted)
    return (a_coef / (target_loss - e)) ** (1 / alpha)


def chinchilla_point(fitted: FittedLaw, target_loss: float) -> tuple[float, float]:
    """The (N, D) of least training compute ``N D`` at the target: the two terms split ``target - E`` as beta : alpha."""
    check_target(fitted, target_loss)
    if _searched(fitted):
        return _least_compute(fitted, target_loss)
    e, a_coef, b_coef, alpha, beta = _size_params(fitted)
    gap = target_loss - e
    n = (a_coef / (gap * beta / (alpha + beta))) ** (1 / alpha)
    d = (b_coef / (gap * alpha / (alpha + beta))) ** (1 / beta)
    return n, d


def _least_compute(fitted: FittedLaw, target_loss: float) -> tuple[float, float]:
    """The (N, D) of least ``N D`` on the target's contour, by a grid over ``ln N`` then a bounded refinement."""
    low = smallest_size(fitted, target_loss) * (1 + 1e-9)
    grid = np.geomspace(low, low * 10**SEARCH_DECADES, GRID_POINTS)[1:]
    compute = grid * tokens_for_loss(fitted, target_loss, grid)
    n = math.exp(minimum_on_grid(lambda u: float(math.exp(u) * tokens_for_loss(fitted, target_loss, np.array([math.exp(u)]))[0]),
                                 np.log(grid), compute))
    return n, float(tokens_for_loss(fitted, target_loss, np.array([n]))[0])


# ---------------------------------------------------------------------------
# the cost side
# ---------------------------------------------------------------------------
def kv_heads_for(n_heads: int, tp: int = 1) -> int:
    """The KV-head count of a reference shape with ``n_heads`` query heads served ``tp``-way: nearest GQA 4.

    vLLM splits KV heads across the ``tp`` GPUs when ``tp`` divides them and replicates them when they divide
    ``tp``; any other count cannot be served. Among the counts that divide ``n_heads`` (GQA groups are whole)
    and that ``tp`` splits, this takes the one nearest ``n_heads / 4``, the larger on a tie (more KV cache: it
    never flatters the throughput). With ``tp = 1`` it is exactly ``n_heads / 4``.
    """
    servable = [k for k in range(1, n_heads + 1) if n_heads % k == 0 and (k % tp == 0 or tp % k == 0)]
    return min(servable, key=lambda k: (abs(k - n_heads / GQA_GROUP), -k))


def reference_shapes(sizes: np.ndarray, vocab: int, tp: int = 1) -> pd.DataFrame:
    """A LLaMA-like shape per size: ``d_model = 128 n_layers``, GQA 4, SwiGLU ``d_ff`` about ``8/3 d_model``.

    ``N = n_layers (2.5 d^2 + 8 d^2)`` for that layout, so ``n_layers = (N / (10.5 x 128^2))^(1/3)``.
    ``d_head`` is 64 below 2B parameters and 128 above, as in the dissertation's models. For a ``tp``-way
    replica the query heads are a multiple of ``lcm(4, tp)`` (each GPU holds whole heads) and the KV heads
    :func:`kv_heads_for` gives (GQA 4 where ``tp`` splits it, the nearest group it splits otherwise).
    """
    from archscale.shapes.architecture import non_embedding_params

    head_multiple = math.lcm(GQA_GROUP, tp)
    rows = []
    for n in np.asarray(sizes, float):
        d_head = 64 if n < 2e9 else 128
        layers = max(2, int(round((n / (10.5 * ASPECT_RATIO**2)) ** (1 / 3))))
        heads = max(1, int(round(ASPECT_RATIO * layers / (d_head * head_multiple)))) * head_multiple
        d_model = heads * d_head
        d_ff = max(64, int(round(8 * d_model / 3 / 64)) * 64)
        rows.append(dict(n_layers=layers, d_model=d_model, n_heads=heads, n_kv_heads=kv_heads_for(heads, tp), d_head=d_head,
                         d_ff=d_ff, vocab=vocab, tie_embeddings=False))
    frame = pd.DataFrame(rows)
    # in floats: the shapes of a huge N (a target near E) would wrap int64 past 9.2e18 into negative sizes
    frame["N"] = non_embedding_params(*(frame[c].astype(float) for c in ("n_layers", "d_model", "n_heads", "n_kv_heads",
                                                                         "d_head", "d_ff")))
    return frame


def serving_profile(serving: Serving):
    """The throughput profile for the serving GPU (vLLM, bf16), or the uncalibrated roofline."""
    from archscale.serving import resolve_profile

    return resolve_profile(None, serving.gpu, "vllm")


def serving_estimate(shapes: pd.DataFrame, serving: Serving) -> pd.DataFrame:
    """The cost model's estimate for each shape on one replica: the one call into it.

    From the vLLM throughput profile matching the GPU (the uncalibrated roofline where none ships;
    :func:`serving_profile` says which): at the workload's whole batch, or under ``serving.limits`` at each shape's
    own operating point (the most requests up to the batch that meet them, ``operating_batch``; ``meets_limits``
    False where not even one request does).
    """
    profile = serving_profile(serving)
    if serving.limits is None:
        return profile.estimate(shapes, serving.workload, serving.tp)
    return profile.estimate_under_limits(shapes, serving.workload, serving.limits, serving.tp)


def serving_rate(estimate: pd.DataFrame, serving: Serving) -> np.ndarray:
    """Tokens per second of each estimated shape (``counts``: total or generated tokens); 0 where the shape cannot be
    served: its weights do not fit, or it misses the latency limits even serving one request alone."""
    column = "tokens_per_s" if serving.counts == "total" else "output_tokens_per_s"
    rate = estimate[column].to_numpy(float)
    if "meets_limits" in estimate:
        rate = np.where(estimate["meets_limits"].to_numpy(bool), rate, 0.0)
    return rate


def serving_throughput(shapes: pd.DataFrame, serving: Serving) -> np.ndarray:
    """Tokens per second of one serving replica for each shape (0 where it cannot be served)."""
    return serving_rate(serving_estimate(shapes, serving), serving)


def _fits(shapes: pd.DataFrame, serving: Serving) -> bool:
    """Whether the engine, set up for the workload, holds at least one sequence of each shape: when a shape that fits
    cannot be served under latency limits, the limits are why. (The estimate under limits cannot say: it estimates
    a shape that misses them at one request, where the engine's memory reserve differs from the workload's.)"""
    return bool((serving_profile(serving).estimate(shapes, serving.workload, serving.tp)["concurrency"] >= 1).all())


class _InferenceCost:
    """Cost of serving ``tokens`` with a model of ``N`` parameters (per the cost model), vectorised over N."""

    def __init__(self, cost: CostModel, low: float, high: float) -> None:
        self.cost = cost
        self.unservable_from = math.inf
        self.too_slow = False  # whether the first unservable shape fits but misses the latency limits
        self.shapes = None
        if cost.on_gpus:
            assert cost.serving is not None
            shapes = reference_shapes(np.geomspace(low, high, SHAPE_POINTS), cost.serving.vocab, cost.serving.tp)
            shapes = shapes.drop_duplicates(subset="N").sort_values("N").reset_index(drop=True)
            # a shape with more parameters than the replica has bytes of memory cannot be held at any precision:
            # it is unservable without asking the cost model (whose integer arithmetic such sizes would overflow)
            held = (shapes["N"] <= cost.serving.tp * cost.serving.gpu.memory_gb * 2**30).to_numpy()
            rate = np.zeros(len(shapes))
            if held.any():
                estimate = serving_estimate(shapes[held].reset_index(drop=True), cost.serving)
                rate[held] = serving_rate(estimate, cost.serving)
                if "operating_batch" in estimate:
                    batches = np.zeros(len(shapes), int)
                    batches[held] = estimate["operating_batch"].to_numpy()
                    shapes["operating_batch"] = np.where(rate > 0, batches, 0)
            self.log_n = np.log(shapes["N"].to_numpy(float))
            self.log_seconds_per_token = np.where(rate > 0, -np.log(np.where(rate > 0, rate, 1.0)), np.inf)
            unservable = np.flatnonzero(rate <= 0)
            if len(unservable):
                first = unservable[0]  # shapes are sorted by N
                self.unservable_from = float(shapes["N"].iloc[first])
                self.too_slow = (cost.serving.limits is not None and bool(held[first])
                                 and _fits(shapes.iloc[[first]], cost.serving))
            self.shapes = shapes

    def operating_batch(self, n: float) -> int | None:
        """Under latency limits, the requests served at once by the reference shape nearest ``n`` (in log N)."""
        if self.shapes is None or "operating_batch" not in self.shapes:
            return None
        return int(self.shapes["operating_batch"].iloc[int(np.argmin(np.abs(self.log_n - math.log(n))))])

    def unservable_note(self) -> str:
        """Why the largest reference shapes cost without end, and what to change."""
        serving = self.cost.serving
        replica = f"one {serving.gpu.name} replica (tp {serving.tp})"
        if self.too_slow:
            return (f"reference shapes from N = {self.unservable_from:.3g} up miss {serving.limits.describe()} on {replica} "
                    "even serving one request alone; their inference cost is infinite here: relax the limit or raise --tp")
        if serving.limits is not None:  # estimated at one request: the weights alone do not fit
            return (f"reference shapes from N = {self.unservable_from:.3g} up do not fit {replica} even serving one "
                    "request; their inference cost is infinite here: raise --tp to cost them")
        return (f"reference shapes from N = {self.unservable_from:.3g} up do not fit {replica} at batch "
                f"{serving.workload.batch_size}; their inference cost is infinite here: raise --tp (or lower --batch) "
                "to cost them")

    def tp_note(self, sizes: Sequence[float]) -> str | None:
        """How the reference shapes near ``sizes`` were made servable ``tp``-way, when that moved them off GQA 4."""
        tp = self.cost.serving.tp if self.cost.serving is not None else 1
        if self.shapes is None or tp == 1:
            return None
        near = self.shapes[self.shapes["N"].between(min(sizes) / 1.5, max(sizes) * 1.5)]
        groups = sorted(set((near["n_heads"] // near["n_kv_heads"]).astype(int)))
        if not groups or groups == [GQA_GROUP]:
            return None
        shown = f"{groups[0]}" if len(groups) == 1 else f"{groups[0]}-{groups[-1]}"
        return (f"--tp {tp}: the reference shapes give each GPU whole heads (query heads a multiple of {math.lcm(GQA_GROUP, tp)}, "
                f"KV heads the count nearest GQA {GQA_GROUP} that {tp} GPUs split or replicate), so near these sizes their "
                f"GQA is {shown}")

    def servable(self, n: np.ndarray) -> np.ndarray:
        """Whether a model of each size ``n`` can be served (always, when costs are FLOPs)."""
        n = np.asarray(n, float)
        if self.cost.kind == "flops":
            return np.ones(n.shape, bool)
        with np.errstate(invalid="ignore"):
            return np.isfinite(np.interp(np.log(n), self.log_n, self.log_seconds_per_token))

    def __call__(self, n: np.ndarray, tokens: float, priced: bool = True) -> np.ndarray:
        """The cost in the plan's unit, or (``priced=False``) in GPU-hours even for dollars."""
        n = np.asarray(n, float)
        if self.cost.kind == "flops":
            return 2.0 * n * tokens
        log_s = np.interp(np.log(n), self.log_n, self.log_seconds_per_token)
        # a replica spans tp GPUs: GPU-hours = seconds x tp / 3600 (then at the price per GPU-hour for dollars)
        hours = np.exp(log_s) * tokens * self.cost.serving.tp / 3600.0
        return hours * self.cost.per_gpu_hour if priced else hours


def training_cost(cost: CostModel, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``6 N D`` FLOPs, or the GPU-hours they take at ``cost.mfu`` of the GPU's peak (at its price for dollars)."""
    flops = 6.0 * np.asarray(n, float) * np.asarray(d, float)
    if cost.kind == "flops":
        return flops
    return flops / (cost.mfu * cost.serving.gpu.flops_per_s) / 3600.0 * cost.per_gpu_hour


# ---------------------------------------------------------------------------
# the optimum
# ---------------------------------------------------------------------------
def inference_aware_optimum(fitted: FittedLaw, target_loss: float, inference_tokens: Sequence[float],
                            cost: CostModel | None = None) -> LifetimePlan:
    """For each inference volume, the (N, D) of least total cost that reaches ``target_loss``."""
    cost = cost or CostModel()
    check_target(fitted, target_loss)
    volumes = [float(v) for v in inference_tokens]
    if not volumes:
        raise UserError("--inference-tokens: give at least one inference volume, e.g. 1e12,1e13")
    for volume in volumes:
        if not (math.isfinite(volume) and volume > 0):
            raise UserError(f"--inference-tokens {volume:g}: the tokens served over the model's life must be positive "
                            "(with none, the optimum is the Chinchilla point: archscale plan --fit FIT --budget C)")
    low = smallest_size(fitted, target_loss) * (1 + 1e-9)
    high = low * 10**SEARCH_DECADES
    grid = np.geomspace(low, high, GRID_POINTS)[1:]
    with np.errstate(all="ignore"):
        tokens = tokens_for_loss(fitted, target_loss, grid)
    inference = _InferenceCost(cost, grid[0], grid[-1])
    n_chin, d_chin = chinchilla_point(fitted, target_loss)
    plan = LifetimePlan(target_loss, cost, [], [])
    for volume in volumes:
        _check_overflow(cost, inference, grid, tokens, volume, target_loss)
        # the costs are finite wherever a model is servable (checked): what is left is the infinite cost of the
        # unservable sizes, which the search skips, so numpy has nothing to warn a user about
        with np.errstate(all="ignore"):
            plan.optima.append(_minimise(fitted, target_loss, volume, cost, inference, grid, tokens))
            plan.chinchilla.append(Optimum(volume, n_chin, d_chin, float(training_cost(cost, n_chin, d_chin)),
                                           float(inference(np.array([n_chin]), volume)[0]), inference.operating_batch(n_chin)))
    sizes = [o.n for o in plan.optima] + [n_chin]
    if max(sizes) >= 0.5 * inference.unservable_from:
        plan.notes.append(inference.unservable_note())
    tp_note = inference.tp_note(sizes)
    if tp_note:
        plan.notes.append(tp_note)
    plan.notes += [f"{fitted.law.name} law: {note}"
                   for note in outside_sizes(fitted.size_range, sizes, [o.d for o in plan.optima] + [d_chin])]
    if any(o.n <= grid[1] or o.n >= grid[-2] for o in plan.optima):
        plan.notes.append("an optimum sits at the edge of the searched sizes: the cost keeps falling beyond it")
    return plan


def _minimise(fitted: FittedLaw, target_loss: float, volume: float, cost: CostModel, inference: _InferenceCost,
              grid: np.ndarray, tokens: np.ndarray) -> Optimum:
    """Grid over log N, then a bounded refinement around the best grid point."""
    def total(log_n: float) -> float:
        n = np.array([math.exp(log_n)])
        d = tokens_for_loss(fitted, target_loss, n)
        value = training_cost(cost, n, d) + inference(n, volume)
        return float(value[0]) if np.isfinite(value[0]) else math.inf

    costs = training_cost(cost, grid, tokens) + inference(grid, volume)
    if not np.any(np.isfinite(costs)):  # _check_overflow has ruled out overflow: no size can be served
        relax = ", relax the latency limit" if cost.serving is not None and cost.serving.limits is not None else ""
        raise UserError(f"no size reaches the target at a finite cost with this serving setup; raise --tp{relax}, "
                        f"pick another GPU, or raise --target-loss (the smallest model that reaches {target_loss:g} "
                        f"has N = {grid[0]:.3g})")
    n = math.exp(minimum_on_grid(total, np.log(grid), costs))
    d = float(tokens_for_loss(fitted, target_loss, np.array([n]))[0])
    return Optimum(volume, n, d, float(training_cost(cost, n, d)), float(inference(np.array([n]), volume)[0]),
                   inference.operating_batch(n))


def _check_overflow(cost: CostModel, inference: _InferenceCost, grid: np.ndarray, tokens: np.ndarray, volume: float,
                    target_loss: float) -> None:
    """One line naming the flag whose value makes a cost overflow a float (past 1.8e308) at a size the plan
    searches: a plan built on infinities would be nonsense, and numpy would warn about them first."""
    with np.errstate(all="ignore"):
        training = training_cost(cost, grid, tokens)
        serving = inference(grid, volume)
        servable = inference.servable(grid)
        flops_bad = not np.all(np.isfinite(6.0 * grid * tokens))
        training_bad = not np.all(np.isfinite(training))
        serving_bad = not np.all(np.isfinite(serving[servable]))
        total_bad = not np.all(np.isfinite((training + serving)[servable]))
        if not (training_bad or serving_bad or total_bad):
            return
        if cost.kind == "dollars":  # the same plan in GPU-hours: finite there, the price is what overflows
            hours = CostModel("gpu-hours", cost.mfu, cost.serving)
            in_hours = (training_cost(hours, grid, tokens) + inference(grid, volume, priced=False))[servable]
            if np.all(np.isfinite(in_hours)):
                raise UserError(f"--gpu-price {cost.usd_per_gpu_hour:g}: the costs in dollars overflow (past 1.8e+308 "
                                "USD) at that price; give a real price per GPU-hour, e.g. 2.5")
    unit = cost.unit
    if serving_bad or (total_bad and not training_bad):
        raise UserError(f"--inference-tokens {volume:g}: the inference cost overflows (past 1.8e+308 {unit}) for models "
                        "that reach the target; give the tokens a model could serve in its life, e.g. 1T or 1e13")
    if cost.on_gpus and not flops_bad:
        raise UserError(f"--mfu {cost.mfu:g}: training at that utilisation of {cost.serving.gpu.name} costs more GPU-hours "
                        "than a float holds (past 1.8e+308); give a realistic MFU, e.g. 0.4")
    raise UserError(f"--target-loss {target_loss:g}: the training tokens it needs overflow (past 1.8e+308 FLOPs) near the "
                    "smallest model that reaches it; choose a target further above the law's irreducible loss")
