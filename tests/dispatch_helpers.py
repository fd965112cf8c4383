"""Shared by the dispatch tests: tiny study configs, the CLI in a subprocess, waiting for a job to be mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from archscale.shapes.architecture import Architecture
from archscale.bench.store import load_results
from archscale.train.config import TrainConfig, write_config_dir
from helpers import write_config

# Tiny recipes: a and b finish in a few steps; c runs long enough (and checkpoints often enough) to be killed mid-run.
SHORT = TrainConfig(tokens=128 * 6, seq_len=32, batch_size=4, micro_batch_size=4, lr_max=3e-3, warmup_steps=2,
                    eval_every=1000, eval_tokens=256, checkpoint_every=1000, log_every=2)
LONG = TrainConfig(tokens=128 * 160, seq_len=32, batch_size=4, micro_batch_size=4, lr_max=3e-3, warmup_steps=2,
                   eval_every=1000, eval_tokens=256, checkpoint_every=8, log_every=8)
SHAPES = {"a": Architecture(2, 32, 2, 1, 16, 64, vocab_size=256), "b": Architecture(1, 32, 2, 2, 16, 96, vocab_size=256),
          "c": Architecture(2, 48, 3, 1, 16, 64, vocab_size=256)}
# Bench: "small" is measured in a blink; "big" takes seconds per batch size, so it can be killed between two of them.
BENCH_SMALL = Architecture(1, 32, 2, 1, 16, 64, vocab_size=256, name="small")
BENCH_BIG = Architecture(4, 256, 4, 2, 64, 512, vocab_size=256, name="big")
# --max-noise 1: these tests check how jobs are dispatched, killed and resumed, not how steady a measurement is
# (make_record's noisy marking has its own tests); two jobs measuring at once on a 2-core CI machine, beside
# the test's own polling, scatter by 20-30% (seen in CI), and a noisy row would fail its job.
BENCH_FLAGS = ("--backend", "torch", "--device", "cpu", "--batch-sizes", "1,16,32", "--input-len", "16",
               "--output-len", "96", "--repeats", "2", "--max-noise", "1", "--no-progress")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def write_study_configs(root: Path) -> Path:
    """configs/{a,b,c}: three recipes, c the long one."""
    for name, arch in SHAPES.items():
        write_config_dir(root / name, arch, LONG if name == "c" else SHORT)
    return root


def write_bench_configs(root: Path) -> list[Path]:
    return [write_config(root / arch.name, arch) for arch in (BENCH_SMALL, BENCH_BIG)]


def start_cli(*args: Any, cwd: Path | None = None) -> subprocess.Popen:
    """``python -m archscale ARGS`` in the background, one torch thread, output captured.

    Ctrl-C reaches the CLI as it would from a terminal: a test run started in the background by a shell (``&``)
    inherits SIGINT ignored, and Python then never raises KeyboardInterrupt, so the child gets the default back.
    """
    env = {**os.environ, **ONE_THREAD}
    return subprocess.Popen([sys.executable, "-m", "archscale", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True,
                            preexec_fn=_terminal_sigint)


def _terminal_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    """The CLI's exit code and output; one still running after ``timeout`` fails the test and is killed with the
    jobs it started (its process group), so that it cannot load the machine under the tests that follow."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the CLI did not end within {timeout:g} s; its stderr: {err[-3000:]}") from None
    return process.returncode, out, err


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120, process: subprocess.Popen | None = None) -> Any:
    """Poll ``condition`` until it is truthy; fail with ``what`` (and the CLI's stderr if it ended early)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the CLI ended (exit {process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def records(jobs_dir: Path) -> dict[str, dict]:
    """study.json's records by config name."""
    path = jobs_dir / "study.json"
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError:  # never: it is written atomically; kept for a clear failure
        raise AssertionError(f"{path} is not valid JSON")
    return {value["name"]: value for value in document["tasks"].values()}


def running_job(jobs_dir: Path, name: str) -> str | None:
    """The job id of config ``name`` once it is recorded as running."""
    record = records(jobs_dir).get(name)
    return record["job_id"] if record and record["state"] == "running" and record.get("job_id") else None


def task_pids(controller_pid: str) -> list[int]:
    """The processes a submitit local controller started (the job's own Python)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == controller_pid:
            found.append(int(stat.parent.name))
    return found


def bench_rows(store: Path, name: str | None = None) -> pd.DataFrame:
    if not store.exists():
        return pd.DataFrame(columns=["name", "batch_size", "status"])
    rows = load_results(store)
    return rows if name is None else rows[rows["name"] == name]


def runs_table(runs: Path) -> pd.DataFrame:
    return pd.read_csv(runs)
