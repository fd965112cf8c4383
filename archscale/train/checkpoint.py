"""Checkpoints that survive ``kill -9``.

A checkpoint is one file, ``RUN_DIR/checkpoint.pt``, written to a temporary
file in the same directory, flushed to disk and renamed over the old one, so
at any instant the file on disk is either the previous complete checkpoint or
the new complete one. It holds the model and optimizer state, the step, the
RNG states and the run's configuration (and its hash, so a resume with
different settings is refused).

Everything in it is a tensor, number, string, list or dict, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint runs no pickled code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archscale.io.errors import UserError
from archscale.io.files import atomic_file

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_FILE


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary sibling, fsync, then ``os.replace``: never a torn file."""
    with atomic_file(path, "wb") as out:
        torch.save(state, out)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no checkpoint to resume from (train without --resume to start a new run)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a foreign or damaged file: say so in one line
        raise UserError(f"{path}: cannot be loaded as an archscale checkpoint ({type(exc).__name__})") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global) and torch RNG states, as plain data."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only when present on both sides)."""
    random.setstate(_to_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


# ---- model and optimizer state, sharded or not -------------------------------------
def _dcp() -> Any:
    """``torch.distributed.checkpoint.state_dict`` when this torch has it (2.2+), else ``None``."""
    try:
        from torch.distributed.checkpoint import state_dict as dcp_state_dict
        return dcp_state_dict
    except ImportError:  # pragma: no cover - old torch
        return None


def capture_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full (unsharded, CPU) model and optimizer state, keyed by parameter name.

    Through ``torch.distributed.checkpoint.state_dict`` the same format comes
    out of a plain, a DDP-unwrapped or an FSDP2-sharded model, so a run can be
    resumed with or without ``--fsdp``. With FSDP this is a collective: every
    rank must call it.
    """
    dcp = _dcp()
    if dcp is None:
        return model.state_dict(), optimizer.state_dict()
    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (dcp.get_model_state_dict(model, options=options),
            dcp.get_optimizer_state_dict(model, optimizer, options=options))


def restore_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                  optimizer_state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_state` (every rank passes the full state it loaded)."""
    dcp = _dcp()
    if dcp is None:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    options = dcp.StateDictOptions(full_state_dict=True)
    dcp.set_model_state_dict(model, model_state, options=options)
    dcp.set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
