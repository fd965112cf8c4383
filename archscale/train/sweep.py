"""``archscale sweep``: train a directory of config directories, safely re-runnable.

Each subdirectory with a ``config.json`` is one recipe, trained in sorted
order. A recipe is skipped when the runs table already has a row with its
config hash, or when its run directory holds ``result.json``; a run
directory with a checkpoint is resumed. So after a crash (or a pre-emption)
the same command picks up where it stopped and never duplicates a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from archscale.errors import UserError
from archscale.train.checkpoint import checkpoint_path
from archscale.train.config import CONFIG_FILE
from archscale.runs import check_appendable
from archscale.train.loop import RESULT_FILE, resolve_run, train
from archscale.train.preflight import check_recipes_fit


@dataclass
class SweepOutcome:
    """One recipe's fate in a sweep."""

    name: str
    status: str  # "trained", "resumed", "skipped: in runs table", "skipped: finished"
    run_dir: Path
    config_hash: str
    val_loss: float | None = None


def config_dirs(configs_dir: str | Path) -> list[Path]:
    """Sorted subdirectories that hold a ``config.json``."""
    root = Path(configs_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (expected a directory of config directories)")
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).exists())
    if not found:
        raise UserError(f"{root}: no subdirectory with a {CONFIG_FILE}")
    return found


def recorded_hashes(runs: Path) -> set[str]:
    """Config hashes that already have a row in the runs table."""
    if not runs.exists():
        return set()
    import pandas as pd

    try:
        frame = pd.read_csv(runs, dtype=str)
    except pd.errors.EmptyDataError:
        return set()
    except (ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"--runs {runs}: cannot be read as CSV: {str(exc).splitlines()[0]}") from None
    return set(frame["config_hash"].dropna()) if "config_hash" in frame.columns else set()


def sweep(configs_dir: str | Path, data_dir: str | Path | None, runs: str | Path, *, tokens: int | None = None,
          out_root: str | Path | None = None, seed: int | None = None, device: str = "auto", progress: bool = True,
          echo: Callable[[str], None] | None = None) -> list[SweepOutcome]:
    """Train each recipe under ``configs_dir`` not yet in ``runs``; return what happened to each."""
    runs = Path(runs)
    dirs = config_dirs(configs_dir)
    specs = [resolve_run(d, tokens=tokens, seed=seed) for d in dirs]  # validate every config before training any
    check_appendable(runs)
    check_recipes_fit(specs, device)
    outcomes = []
    for config_dir, spec in zip(dirs, specs):
        run_dir = Path(out_root) / config_dir.name if out_root is not None else config_dir / "run"
        done = recorded_hashes(runs)
        if spec.config_hash in done:
            outcomes.append(SweepOutcome(config_dir.name, "skipped: in runs table", run_dir, spec.config_hash))
        elif (run_dir / RESULT_FILE).exists():
            outcomes.append(SweepOutcome(config_dir.name, "skipped: finished", run_dir, spec.config_hash))
        else:
            resume = checkpoint_path(run_dir).exists()
            if echo:
                echo(f"{'resuming' if resume else 'training'} {config_dir.name} -> {run_dir}")
            result = train(config_dir, data_dir, run_dir, tokens=tokens, seed=seed, resume=resume, runs=runs,
                           device=device, progress=progress)
            outcomes.append(SweepOutcome(config_dir.name, "resumed" if resume else "trained", run_dir,
                                         spec.config_hash, result.val_loss))
    return outcomes
