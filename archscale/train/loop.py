"""The training loop: one config directory in, one runs-table row out.

nanoGPT-style and deliberately small: AdamW (fused where the build has it)
with weight decay on 2-D weights only, linear warmup then cosine (or WSD)
decay to ``lr_min_ratio * lr_max``, gradient clipping, optional z-loss,
for a Mixture-of-Experts shape the router's load-balancing loss (weighted
by config.json's ``router_aux_loss_coef``), gradient accumulation, bf16 autocast on CUDA, periodic validation, a JSONL
log, atomic checkpoints and an exact ``--resume``.

Throughput is reported for the steady state: the first ``STARTUP_STEPS``
optimizer steps of each session (where ``torch.compile`` compiles, and the
optimizer allocates its moments) are timed apart and reported as
``startup_s`` (not the learning-rate warm-up, train.json's ``warmup_steps``);
``tokens_per_s`` and MFU count the steps after them, in the result and in
every log line (a log line that falls in the start-up has no rate). Time
spent in evaluation, logging and checkpoints is in neither.

Why resume is exact: the batch of step ``s`` is a pure function of
``(seed, s)`` (:class:`~archscale.train.data.TokenDataset`), the learning
rate is a pure function of ``s``, and the checkpoint holds the model, the
optimizer moments and the RNG states. A run killed after a checkpoint and
resumed therefore performs the same arithmetic as one that never stopped.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP, or with
``--fsdp`` sharded with FSDP2 (``fully_shard`` per block, then the root);
each rank takes its slice of every global batch, and rank 0 alone writes the
log, checkpoints, ``result.json`` and the runs-table row. Run it as
``torchrun --nproc_per_node 8 -m archscale.train CONFIG_DIR --data DIR [--fsdp]``.
Checkpoints hold full (unsharded) state either way, so a run can be resumed
with a different number of ranks or without ``--fsdp``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from archscale.shapes.architecture import Architecture
from archscale.io.errors import UserError, add_hint, is_resource_failure, keep_hint
from archscale.io.files import write_text
from archscale.model.transformer import Transformer, compile_unavailable
from archscale.fit.runs import (
    MOE_RUN_COLUMNS, RENAMED_RUN_COLUMNS, SHAPE, append_run, check_appendable, current_names, recipe_hashes,
)
from archscale.train.checkpoint import (
    capture_state, checkpoint_path, load_checkpoint, restore_state, rng_state, save_checkpoint, set_rng_state,
)
from archscale.train.config import (
    CONFIG_FILE, TRAIN_FILE, TrainConfig, canonical_model_json, load_model_config, load_train_config, recipe_hash,
    with_router_aux_loss_coef,
)
from archscale.train.data import TokenDataset, data_fingerprint, default_data_dir, read_meta
from archscale.train.preflight import check_training_memory
from archscale.shapes.hf_config import write_hf_config

LOG_FILE = "log.jsonl"
RESULT_FILE = "result.json"

# Dense bf16 peak TFLOP/s by GPU name (datasheets; see REFERENCE.md section 4).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
STARTUP_STEPS = 2
"""Steps per session timed apart from the steady rate: the first compiles (when compiling) and allocates the
optimizer state; the second absorbs what the first leaves (allocator growth, a guard that recompiles)."""


# ---- what a run is ----------------------------------------------------------------
@dataclass
class RunSpec:
    """A fully resolved recipe: shape, HF config dict, training settings and their hash."""

    arch: Architecture
    hf_config: dict[str, Any]
    train_config: TrainConfig
    recipe_hash: str
    name: str
    source_dir: Path | None = None


@dataclass
class TrainResult:
    """What a finished run reports; ``row`` is the runs-table row (also in ``result.json``)."""

    run_dir: Path
    steps: int
    tokens: int
    train_loss: float
    val_loss: float
    tokens_per_s: float
    mfu: float | None
    recipe_hash: str
    row: dict[str, Any] = field(default_factory=dict)
    startup_steps: int = 0
    startup_s: float = 0.0
    compiled: bool = False


def resolve_run(config: str | Path | Architecture, train_config: TrainConfig | None = None,
                tokens: float | None = None, seed: int | None = None) -> RunSpec:
    """Read a config directory (or take an Architecture), apply overrides, hash the result.

    Precedence: explicit ``train_config`` > ``train.json`` > defaults for the
    size; then ``tokens``/``seed`` overrides on top. An MoE shape's config gets its load-balancing weight
    (:func:`~archscale.train.config.with_router_aux_loss_coef`), which the hash covers.
    """
    source_dir = None
    if isinstance(config, Architecture):
        arch, hf_config, source = config, write_hf_config(config), f"architecture {config.name or '?'}"
        base = train_config or TrainConfig.for_model_size(arch.n_params_non_embedding)
    else:
        source_dir = Path(config)
        arch, hf_config = load_model_config(source_dir)
        source = str(source_dir / CONFIG_FILE)
        base = train_config or load_train_config(source_dir, arch)
    hf_config = with_router_aux_loss_coef(hf_config, arch, source)
    cfg = base.replace("--tokens/--seed", tokens=tokens, seed=seed)
    name = arch.name or (source_dir.resolve().name if source_dir else "model")
    return RunSpec(arch, hf_config, cfg, recipe_hash(hf_config, cfg), name, source_dir)


# ---- distributed ------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun with ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` is CUDA when present, else CPU; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    if requested not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", info.local_rank)


# ---- schedule, optimizer, FLOPs -------------------------------------------------------
def effective_warmup(cfg: TrainConfig) -> int:
    """Warmup capped at a tenth of the run, so a short run still reaches its decay."""
    return min(cfg.warmup_steps, cfg.total_steps // 10)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warmup, then cosine or WSD decay."""
    total, warmup = cfg.total_steps, effective_warmup(cfg)
    lr_min = cfg.lr_max * cfg.lr_min_ratio
    if step < warmup:
        return cfg.lr_max * (step + 1) / warmup
    if cfg.schedule == "wsd":
        decay_start = max(warmup, total - math.ceil(cfg.wsd_decay_fraction * total))
        if step < decay_start:
            return cfg.lr_max
        progress = (step - decay_start + 1) / max(1, total - decay_start)
        return cfg.lr_max + (lr_min - cfg.lr_max) * min(1.0, progress)
    progress = (step - warmup) / max(1, total - 1 - warmup)
    return lr_min + 0.5 * (cfg.lr_max - lr_min) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only (norm gains are not decayed); fused if asked and this build allows."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.lr_max, betas=cfg.betas)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, **kwargs)


def train_flops_per_token(arch: Architecture, seq_len: int) -> float:
    """``6 N + 12 L H Q T``: N counts every matmul weight a token uses (non-embedding plus the output head; with
    experts, the ``k`` it is routed to and the router, not all ``E``)."""
    n_matmul = arch.n_params_active_non_embedding + arch.vocab_size * arch.d_model
    return 6.0 * n_matmul + 12.0 * arch.n_layers * arch.n_heads * arch.d_head * seq_len


def detect_peak_tflops(device: torch.device) -> float | None:
    """Datasheet bf16 peak of a known GPU; ``None`` on CPU or an unknown GPU (MFU is then null)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


# ---- the loop ---------------------------------------------------------------------
class Trainer:
    """Holds one run's state; :meth:`run` trains to the token budget and reports."""

    def __init__(self, spec: RunSpec, data_dir: Path, out_dir: Path, device: torch.device, info: DistInfo,
                 peak_tflops: float | None, progress: bool, fsdp: bool = False,
                 compile_model: bool | None = None) -> None:
        self.spec, self.cfg, self.out_dir, self.device, self.info = spec, spec.train_config, out_dir, device, info
        self.progress = progress and info.is_main
        self.train_data = TokenDataset(data_dir, "train", self.cfg.seq_len)
        self.data_dir, self.data_hash = data_dir, data_fingerprint(read_meta(data_dir))
        self.val_data = TokenDataset(data_dir, "val", self.cfg.seq_len)
        per_rank = self.cfg.batch_size // info.world
        if self.cfg.batch_size % (info.world * self.cfg.micro_batch_size):
            raise UserError(f"{TRAIN_FILE}: batch_size {self.cfg.batch_size} must be a multiple of micro_batch_size "
                            f"{self.cfg.micro_batch_size} x {info.world} ranks")
        self.per_rank, self.accum = per_rank, per_rank // self.cfg.micro_batch_size
        torch.manual_seed(self.cfg.seed)
        theta = float(spec.hf_config.get("rope_theta", 500000.0))
        eps = float(spec.hf_config.get("rms_norm_eps", 1e-5))
        self.model = Transformer(spec.arch, rope_theta=theta, norm_eps=eps, max_seq_len=self.cfg.seq_len).to(device)
        self.autocast_dtype = self._autocast_dtype()
        self.fsdp = fsdp and info.world > 1
        if self.fsdp:
            self._shard()
        self.optimizer = make_optimizer(self.model, self.cfg, fused=not self.fsdp)
        self.step = 0
        self.step_seconds: list[float] = []  # this session's optimizer steps, in order
        self.resumed_step_seconds: list[float] = []  # the checkpoint's session, reported when this one has no steps
        self._window: list[float] = [0, 0.0]  # tokens and seconds since the last log line
        self.last_train_loss = float("nan")
        self.balance_coef = float(spec.hf_config.get("router_aux_loss_coef", 0.0)) if spec.arch.is_moe else None
        self.step_balance = torch.zeros(())  # this step's mean load-balancing loss (MoE only)
        self.last_balance_loss = float("nan")
        self.peak = peak_tflops if peak_tflops is not None else detect_peak_tflops(device)
        self.flops_per_token = train_flops_per_token(spec.arch, self.cfg.seq_len)
        self.compiled = self._should_compile(compile_model)
        self.runner: nn.Module = self._wrap(self.model)

    def _autocast_dtype(self) -> torch.dtype | None:
        if self.cfg.dtype == "bfloat16" or (self.cfg.dtype == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None

    def _shard(self) -> None:
        """FSDP2: shard each block, then the root (embedding, final norm, head); bf16 compute under autocast."""
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:
            raise UserError(f"--fsdp needs torch.distributed.fsdp.fully_shard (torch 2.6+); this is torch {torch.__version__}") from None
        policy = MixedPrecisionPolicy(param_dtype=self.autocast_dtype, reduce_dtype=torch.float32) if self.autocast_dtype else MixedPrecisionPolicy()
        for block in self.model.layers:
            fully_shard(block, mp_policy=policy)
        fully_shard(self.model, mp_policy=policy)

    def _should_compile(self, requested: bool | None) -> bool:
        """``--compile``/``--no-compile`` if given, else ``compile`` in train.json, else on CUDA only.

        A flag, not a recipe setting: it does not change the config hash, so a
        run may be resumed with or without it.
        """
        wanted = requested if requested is not None else self.cfg.compile
        if wanted is None:
            wanted = self.device.type == "cuda"
        problem = compile_unavailable(self.device.type) if wanted else None
        if problem is not None:
            raise UserError(problem if requested else f"{TRAIN_FILE} asks for compile: {problem} (or set compile to false)")
        return wanted

    def _wrap(self, model: nn.Module) -> nn.Module:
        """Compile (when asked; CUDA by default) and DDP-wrap; the bare (or FSDP-sharded) model stays for eval and checkpoints."""
        runner = model
        if self.compiled:
            runner = torch.compile(runner)
        if self.info.world > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel
            runner = DistributedDataParallel(runner, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return runner

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ---- state ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs (a collective under FSDP: every rank calls it)."""
        model_state, optimizer_state = capture_state(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state, "step": self.step,
                "rng": rng_state(), "recipe_hash": self.spec.recipe_hash, "data_hash": self.data_hash,
                "hf_config": self.spec.hf_config,
                "train_config": self.cfg.to_dict(), "last_train_loss": self.last_train_loss,
                "step_seconds": self.timed_steps,  # so a resume that has no steps left still reports tokens/s
                **({"last_balance_loss": self.last_balance_loss} if self.balance_coef is not None else {})}

    def load(self, state: dict[str, Any]) -> None:
        written_for = state.get("recipe_hash", state.get("config_hash"))  # config_hash: checkpoints before the rename
        if written_for != self.spec.recipe_hash:
            raise UserError(f"{checkpoint_path(self.out_dir)}: was written for recipe {written_for}, "
                            f"these settings hash to {self.spec.recipe_hash}; resume with the same config and flags")
        trained_on = state.get("data_hash")  # absent in checkpoints written before runs named their data
        if trained_on is not None and trained_on != self.data_hash:
            raise UserError(f"--data {self.data_dir}: {checkpoint_path(self.out_dir)} was trained on other data "
                            f"(data hash {trained_on}, this data {self.data_hash}); resume with the --data it started "
                            "with, or train on this data in a new --out")
        restore_state(self.model, self.optimizer, state["model"], state["optimizer"])
        self.step = int(state["step"])
        self.last_train_loss = float(state.get("last_train_loss", float("nan")))
        self.last_balance_loss = float(state.get("last_balance_loss", float("nan")))
        self.resumed_step_seconds = [float(x) for x in state.get("step_seconds", [])]
        set_rng_state(state["rng"])

    def save(self) -> None:
        state = self.state()
        if self.info.is_main:
            save_checkpoint(checkpoint_path(self.out_dir), state)
        self._barrier()

    def _barrier(self) -> None:
        if self.info.world > 1:
            dist.barrier()

    # ---- one step -----------------------------------------------------------------
    def micro_batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro batches of the global batch of ``step``."""
        offsets = self.train_data.offsets(self.cfg.seed, step, self.cfg.batch_size)
        mine = offsets[self.info.rank * self.per_rank : (self.info.rank + 1) * self.per_rank]
        for i in range(self.accum):
            yield self.train_data.fetch(mine[i * self.cfg.micro_batch_size : (i + 1) * self.cfg.micro_batch_size], self.device)

    def train_step(self) -> torch.Tensor:
        """Forward/backward over the micro batches, clip, step; returns the mean cross-entropy.

        The loss minimised adds the z-loss (when set) and, for an MoE shape, ``router_aux_loss_coef`` times the
        load-balancing loss, whose mean over the micro batches is kept in ``step_balance`` for the log.
        """
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        balance_total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(self.micro_batches(self.step)):
            last = i == self.accum - 1
            with self._grad_sync(last):
                with self.autocast():
                    loss, ce, balance = self._loss(x, y)
                (loss / self.accum).backward()
            total += ce.detach()
            if balance is not None:
                balance_total += balance.detach()
        self.step_balance = balance_total / self.accum
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / self.accum

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(loss to minimise, cross-entropy, load-balancing loss or None) of one micro batch."""
        balance = None
        if self.balance_coef is None:
            logits, ce = self.runner(x, y)
        else:
            logits, ce, balance = self.runner(x, y, balance=True)
        loss = ce
        if self.cfg.z_loss > 0:
            loss = loss + self.cfg.z_loss * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        if balance is not None and self.balance_coef:
            loss = loss + self.balance_coef * balance
        return loss, ce, balance

    def _grad_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients across ranks only on the last micro batch of a step."""
        if self.info.world == 1 or last:
            if self.fsdp:
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.fsdp:
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.runner.no_sync()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation cross-entropy (nats/token) over a fixed, evenly spread set of sequences."""
        count = max(1, self.cfg.eval_tokens // self.cfg.seq_len)
        offsets = self.val_data.eval_offsets(count)
        offsets = np.resize(offsets, max(self.info.world, len(offsets) // self.info.world * self.info.world))
        mine = offsets[self.info.rank :: self.info.world]  # equal counts per rank: FSDP forwards are collectives
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for start in range(0, len(mine), self.cfg.micro_batch_size):
            x, y = self.val_data.fetch(mine[start : start + self.cfg.micro_batch_size], self.device)
            with self.autocast():
                _, loss = self.model(x, y)
            sums += torch.tensor([loss.double().item() * len(x), len(x)], dtype=torch.float64, device=self.device)
        if self.info.world > 1:
            dist.all_reduce(sums)
        return float(sums[0] / sums[1])

    def _mean_across_ranks(self, value: torch.Tensor) -> float:
        if self.info.world > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.info.world
        return float(value)

    # ---- the run ------------------------------------------------------------------
    def run(self) -> tuple[float, float]:
        """Train from ``self.step`` to the end; return (last train loss, final validation loss)."""
        bar = self._progress_bar(self.cfg.total_steps)
        finished = False
        try:
            while self.step < self.cfg.total_steps:
                self._one_step(bar)
            finished = True
        finally:
            if bar is not None:
                bar.close(keep=finished)  # a failure's one line is not left under a half-drawn bar
        final_val = self.evaluate()
        self._log(final_val, self.tokens_per_s, final=True)
        if not math.isfinite(final_val):
            raise UserError(f"training diverged: final validation loss is {final_val}; lower lr_max in {TRAIN_FILE}")
        return self.last_train_loss, final_val

    def _one_step(self, bar: "ProgressBar | None") -> None:
        """One optimizer step plus whatever falls on it: logging, evaluation, checkpointing."""
        cfg = self.cfg
        started = time.perf_counter()
        loss = self.train_step()
        is_last = self.step == cfg.total_steps
        log_now = self.step % cfg.log_every == 0 and not is_last  # the last step is logged with the final eval
        eval_now = bool(cfg.eval_every) and self.step % cfg.eval_every == 0 and not is_last
        checkpoint_now = (bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0) or is_last
        if log_now or is_last or self.progress:
            exact = log_now or is_last  # a value every rank agrees on (an all-reduce) vs. rank 0's own
            self.last_train_loss = self._mean_across_ranks(loss) if exact else float(loss)
            if exact and self.balance_coef is not None:
                self.last_balance_loss = self._mean_across_ranks(self.step_balance)
            if exact and not math.isfinite(self.last_train_loss):
                raise UserError(f"training diverged at step {self.step} (train loss {self.last_train_loss}); "
                                f"lower lr_max or raise warmup_steps in {TRAIN_FILE}")
        startup_ends = len(self.step_seconds) + 1 == STARTUP_STEPS
        if self.device.type == "cuda" and (log_now or is_last or eval_now or checkpoint_now or startup_ends):
            torch.cuda.synchronize()  # so that no step's GPU work is left to run in untimed evaluation or saving
        elapsed = time.perf_counter() - started  # exact between synchronisations, which end every timed span
        self.step_seconds.append(elapsed)
        if len(self.step_seconds) > STARTUP_STEPS:  # log windows hold steady steps only
            self._window[0] += cfg.tokens_per_step
            self._window[1] += elapsed
        val_loss = self.evaluate() if eval_now else None
        if log_now or val_loss is not None:
            self._log(val_loss, self._window[0] / self._window[1] if self._window[1] > 0 else float("nan"))
            self._window = [0, 0.0]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{self.last_train_loss:.4f}", tok_s=f"{self.tokens_per_s:,.0f}")
        if checkpoint_now:
            self.save()

    @property
    def timed_steps(self) -> list[float]:
        """Step times the figures come from: this session's, or the checkpoint's when this one trained no step."""
        return self.step_seconds or self.resumed_step_seconds

    @property
    def startup_steps(self) -> int:
        """Steps of this session timed apart: ``STARTUP_STEPS``, less in a session too short to keep one after them."""
        return min(STARTUP_STEPS, max(0, len(self.timed_steps) - 1))

    @property
    def startup_s(self) -> float:
        """Seconds the start-up steps took (compilation included)."""
        return sum(self.timed_steps[: self.startup_steps])

    @property
    def tokens_per_s(self) -> float:
        """Steady-state tokens/s: this session's steps after the start-up steps."""
        steady = self.timed_steps[self.startup_steps :]
        seconds = sum(steady)
        return len(steady) * self.cfg.tokens_per_step / seconds if seconds > 0 else float("nan")

    def mfu(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation against ``peak`` TFLOP/s per rank; ``None`` without a peak."""
        if not self.peak or not math.isfinite(tokens_per_s):
            return None
        return tokens_per_s * self.flops_per_token / (self.peak * 1e12 * self.info.world)

    def _log(self, val_loss: float | None, tokens_per_s: float, final: bool = False) -> None:
        if not self.info.is_main:
            return
        record = {"step": self.step, "tokens": self.step * self.cfg.tokens_per_step, "train_loss": _num(self.last_train_loss),
                  "val_loss": val_loss, "lr": lr_at(max(0, self.step - 1), self.cfg),
                  "tokens_per_s": _num(tokens_per_s), "mfu": self.mfu(tokens_per_s)}
        if self.balance_coef is not None:  # MoE: the router's load-balancing loss (k when perfectly even)
            record["balance_loss"] = _num(self.last_balance_loss)
        if final:
            record.update(final=True, startup_steps=self.startup_steps, startup_s=self.startup_s, compiled=self.compiled)
        with open(self.out_dir / LOG_FILE, "a") as out:
            out.write(json.dumps(record) + "\n")

    def _progress_bar(self, total: int) -> "ProgressBar | None":
        return ProgressBar(f"train {self.spec.name}", total, self.step) if self.progress else None


class ProgressBar:
    """A rich progress bar on stderr: steps, train loss, tokens/s, elapsed and remaining time."""

    def __init__(self, description: str, total: int, done: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=Console(stderr=True))
        self._task = self._progress.add_task(description, total=total, completed=done, info="")
        self._progress.start()

    def update(self, steps: int) -> None:
        self._progress.advance(self._task, steps)

    def set_postfix(self, **fields: str) -> None:
        self._progress.update(self._task, info=" ".join(f"{k}={v}" for k, v in fields.items()))

    def close(self, keep: bool = True) -> None:
        """Stop drawing; ``keep=False`` (a failure) erases the bar so the error line stands alone."""
        if not keep:
            self._progress.live.transient = True
        self._progress.stop()


def _num(value: float) -> float | None:
    """JSON has no NaN: unknown numbers are written as null."""
    return value if value is not None and math.isfinite(value) else None


# ---- entry point ------------------------------------------------------------------
def train(config: str | Path | Architecture, data_dir: str | Path | None = None, out_dir: str | Path | None = None, *,
          train_config: TrainConfig | None = None, tokens: float | None = None, seed: int | None = None,
          resume: bool = False, runs: str | Path | None = None, device: str = "auto",
          peak_tflops: float | None = None, progress: bool = True, fsdp: bool = False,
          compile_model: bool | None = None, threads: int | None = None) -> TrainResult:
    """Train one model to its token budget and report it.

    ``config`` is a config directory (``config.json`` + optional ``train.json``)
    or an :class:`Architecture`. ``data_dir`` defaults to the embedded corpus.
    ``out_dir`` defaults to ``CONFIG_DIR/run``. Every input is checked before
    anything is written. On success ``out_dir/result.json`` holds the row,
    which is also appended to ``runs`` (a CSV) when given, exactly once even
    across crashes and resumes. ``fsdp`` shards with FSDP2 under torchrun.
    ``compile_model`` overrides ``compile`` in train.json (None: keep it;
    its own default compiles on CUDA only). The result's ``tokens_per_s``
    and ``mfu`` are steady-state figures; ``startup_s`` holds the first steps.
    ``threads`` sets torch's CPU threads for this run (None: torch's default,
    every core, which on a machine other work shares can be slower than
    fewer threads, as threads wait on each other's busy cores).
    """
    _check_peak_tflops(peak_tflops)
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    spec = resolve_run(config, train_config, tokens, seed)
    out = _out_dir(spec, out_dir)
    data = Path(data_dir) if data_dir is not None else default_data_dir()
    meta = read_meta(data)
    if int(meta["vocab_size"]) > spec.arch.vocab_size:
        raise UserError(f"--data {data}: tokenizer vocabulary {meta['vocab_size']} > config vocab_size "
                        f"{spec.arch.vocab_size} ({CONFIG_FILE}); use a matching tokenizer or a larger vocab_size")
    _check_out_dir(out, resume)
    if runs is not None:
        check_appendable(runs)  # a row that cannot be appended is refused now, not after training
    if resume and (out / RESULT_FILE).exists() and _same_run(out, spec, data_fingerprint(meta)):
        with keep_hint(f"the run is complete in {out}: fix the cause and rerun with --resume to record its row"):
            return _finished(out, spec, runs)
    info = init_distributed("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        torch_device = pick_device(device, info)
        check_training_memory(spec.arch, spec.train_config.micro_batch_size, spec.train_config.seq_len, torch_device,
                              autocast_bf16=torch_device.type == "cuda" and spec.train_config.dtype != "float32",
                              shards=info.world if fsdp else 1, label=spec.name)
        trainer = Trainer(spec, data, out, torch_device, info, peak_tflops, progress, fsdp, compile_model)
        if resume:
            trainer.load(load_checkpoint(checkpoint_path(out), map_location=trainer.device))
        if info.is_main:
            _prepare_out_dir(out, spec, trainer.step)
        trainer._barrier()
        note = repeat_note(spec.train_config, meta, data)
        if note and info.is_main:
            print(note, file=sys.stderr, flush=True)
        train_loss, val_loss = trainer.run()
        result = _result(trainer, out, train_loss, val_loss)
        if info.is_main:
            with keep_hint(f"the run is complete in {out}: fix the cause and rerun with --resume to record its row"):
                _record(result, runs)
        trainer._barrier()  # ranks leave together: tearing gloo down under a busy peer can abort it
        del trainer
        # DDP's reducer holds the process group through reference cycles; free it now, before the group is
        # destroyed, rather than at interpreter exit, where gloo's threads can be torn down out of order
        gc.collect()
        return result
    except BaseException as exc:
        if is_resource_failure(exc):  # disk full, read-only, out of memory: say what is kept and how to go on
            add_hint(exc, _kept(out))
        raise
    finally:
        if info.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _check_peak_tflops(peak_tflops: float | None) -> None:
    """A peak that is not a positive, finite TFLOP/s would put a negative or infinite MFU in the runs table."""
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise UserError(f"--peak-tflops {peak_tflops:g}: must be a positive number of TFLOP/s per device (989 for an "
                        "H100's dense bf16); leave it out to use the datasheet peak of a known GPU")


def repeat_note(cfg: TrainConfig, meta: dict[str, Any], data: Path) -> str | None:
    """A note when the budget is more than one pass over the train split, else None.

    Nothing stops such a run, but its row would enter the runs table as a plain
    (N, D, loss) point, and scaling laws are fitted on tokens each seen once:
    repeated tokens are worth less than fresh ones, so the loss is not what D
    fresh tokens would give.
    """
    tokens, n_train = cfg.total_steps * cfg.tokens_per_step, int(meta["n_train"])
    epochs = tokens / n_train
    if epochs <= 1:
        return None
    return (f"note: {epochs:.3g} epochs of the corpus: {tokens:,} training tokens from a train split of {n_train:,} "
            f"({data}); repeated tokens are worth less than fresh ones, so this run's loss is not a one-epoch point "
            "for a scaling fit: give a bigger corpus (--data) or fewer --tokens")


def _kept(out: Path) -> str:
    """What a failed run leaves behind and how to go on (attached to an I/O or memory failure)."""
    if checkpoint_path(out).exists():
        return (f"the last checkpoint in {out} is kept: fix the cause and rerun the same command with --resume "
                "(a sweep resumes by itself)")
    return f"no checkpoint had been written in {out} yet: fix the cause and run the command again"


def _out_dir(spec: RunSpec, out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if spec.source_dir is None:
        raise UserError("train: out_dir is required when training an Architecture (no config directory to put it in)")
    return spec.source_dir / "run"


def _check_out_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a run, and to resume one that has no checkpoint."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    has_checkpoint = checkpoint_path(out).exists()
    if resume and not has_checkpoint:
        raise UserError(f"--resume: {checkpoint_path(out)} does not exist; nothing to resume (drop --resume to start)")
    if not resume and (has_checkpoint or (out / RESULT_FILE).exists()):
        raise UserError(f"--out {out}: already holds a run; pass --resume to continue it or choose another --out")


def _same_run(out: Path, spec: RunSpec, data_hash: str) -> bool:
    """Whether ``out`` holds this recipe's finished run on this data (a result written before rows named their
    data counts as this data's)."""
    try:
        row = current_names(json.loads((out / RESULT_FILE).read_text()))
    except (OSError, json.JSONDecodeError):
        return False
    return row.get("recipe_hash") == spec.recipe_hash and row.get("data_hash") in (None, data_hash)


def _prepare_out_dir(out: Path, spec: RunSpec, step: int) -> None:
    """Write the run's exact config files and drop log lines a killed process wrote after its checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # a temp file a killed process was writing (checkpoint, log, result)
        stale.unlink(missing_ok=True)
    write_text(out / CONFIG_FILE, canonical_model_json(spec.hf_config))
    write_text(out / TRAIN_FILE, spec.train_config.to_json())
    log = out / LOG_FILE
    if log.exists():
        kept = [line for line in log.read_text().splitlines(keepends=True) if _log_step(line) <= step]
        write_text(log, "".join(kept))


def _log_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a torn last line from a kill: drop it


def _result(trainer: Trainer, out: Path, train_loss: float, val_loss: float) -> TrainResult:
    spec, arch = trainer.spec, trainer.spec.arch
    tokens = trainer.cfg.total_steps * trainer.cfg.tokens_per_step
    tps = trainer.tokens_per_s
    row: dict[str, Any] = {"N": arch.n_params_non_embedding, "D": tokens, "loss": val_loss}
    row.update({column: value for column, value in arch.shape_columns().items() if column in SHAPE})
    if arch.is_moe:  # a dense row stays as it was
        moe = {**arch.shape_columns(), "N_active": arch.n_params_active_non_embedding}
        row.update({column: moe[column] for column in MOE_RUN_COLUMNS})
    row.update({"train_loss": _num(train_loss), "val_loss": val_loss, "tokens_per_s": _num(tps), "mfu": trainer.mfu(tps),
                "startup_steps": trainer.startup_steps, "startup_s": trainer.startup_s, "compiled": trainer.compiled,
                "recipe_hash": spec.recipe_hash, "data_hash": trainer.data_hash, "run_dir": str(out.resolve()),
                "name": spec.name, "steps": trainer.cfg.total_steps, "seed": trainer.cfg.seed})
    return TrainResult(out, trainer.cfg.total_steps, tokens, train_loss, val_loss, tps, row["mfu"], spec.recipe_hash, row,
                       trainer.startup_steps, trainer.startup_s, trainer.compiled)


def _record(result: TrainResult, runs: str | Path | None) -> None:
    """Append the row (unless this run already has one), then write ``result.json`` last."""
    if runs is not None and not _has_row(Path(runs), result.row):
        append_run(runs, result.row)
    write_text(result.run_dir / RESULT_FILE, json.dumps(result.row, indent=2) + "\n")


def _has_row(runs: Path, row: dict[str, Any]) -> bool:
    """Whether ``runs`` already holds this run (same recipe_hash and run_dir): keeps appends idempotent."""
    if not runs.exists():
        return False
    import pandas as pd
    try:
        frame = pd.read_csv(runs, usecols=lambda c: c in ("recipe_hash", *RENAMED_RUN_COLUMNS, "run_dir"), dtype=str)
    except (ValueError, pd.errors.EmptyDataError):
        return False
    if "run_dir" not in frame.columns:
        return False
    return bool(((recipe_hashes(frame) == row["recipe_hash"]) & (frame["run_dir"] == row["run_dir"])).any())


def _finished(out: Path, spec: RunSpec, runs: str | Path | None) -> TrainResult:
    """A resumed run that had already finished: report it again (and add a missing row)."""
    row = current_names(json.loads((out / RESULT_FILE).read_text()))
    result = TrainResult(out, int(row.get("steps", 0)), int(row["D"]), row.get("train_loss") or float("nan"),
                         float(row["val_loss"]), row.get("tokens_per_s") or float("nan"), row.get("mfu"), spec.recipe_hash, row,
                         int(row.get("startup_steps") or 0), float(row.get("startup_s") or 0.0), bool(row.get("compiled")))
    _record(result, runs)
    return result
