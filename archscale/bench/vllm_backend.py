"""The vLLM backend: each (config, batch size) measured by a fresh worker process.

The parent never imports vLLM (only checks that it is importable, before any
process starts); :mod:`archscale.bench.vllm_worker` does the measuring. The
worker runs in its own session so Ctrl-C here, or a timeout, can end it and
any engine processes it started; its stderr is read line by line for
progress and, when it fails without writing a result, for the last error
line.

The worker gets a private copy of the config directory holding only
``config.json`` (a preset's generated one), with ``max_position_embeddings``
raised to at least ``input_len + output_len`` so vLLM accepts the
``max_model_len``; nothing in the user's directory is read or written by vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any, Iterator

from archscale.bench.records import canonical_dtype, failed, gpu_key_for_device
from archscale.bench.sweep import BenchOptions, Target, Tick
from archscale.bench.vllm_worker import PROGRESS_PREFIX
from archscale.errors import UserError

NOT_INSTALLED = "vLLM is not installed: pip install 'archscale[vllm]' on a GPU machine"
_ERROR_LINE = re.compile(r"(?i)(^[\w.]*(error|exception)\b|\b(error|fatal|out of memory|segmentation fault|killed)\b)")
STDERR_TAIL_LINES = 400


def vllm_available() -> bool:
    """Whether ``import vllm`` would find a package, without importing it (that takes seconds and a GPU)."""
    return importlib.util.find_spec("vllm") is not None


def error_line(lines: list[str], returncode: int | None) -> str:
    """The most telling line of a dead worker's stderr: the last line naming an error, else the last line.

    vLLM and NCCL often log warnings after the traceback (process-group
    teardown), so the plain last line is frequently not the error.
    """
    stripped = [line.strip() for line in lines if line.strip()]
    for line in reversed(stripped):
        if _ERROR_LINE.search(line):
            return line
    last = f"; last line: {stripped[-1]}" if stripped else ""
    if returncode is not None and returncode < 0:
        return f"worker killed by signal {-returncode}{last}"
    return f"worker exited with code {returncode}{last or ' and no message'}"


def worker_config(hf_config: dict, min_positions: int) -> dict:
    """The config.json the worker's vLLM reads: the user's, able to hold ``min_positions`` tokens."""
    config = dict(hf_config)
    config.setdefault("architectures", ["LlamaForCausalLM"])
    config.setdefault("model_type", "llama")
    if int(config.get("max_position_embeddings") or 0) < min_positions:
        config["max_position_embeddings"] = min_positions
    return config


class VllmBackend:
    """Run :mod:`archscale.bench.vllm_worker` once per (config, batch size)."""

    name = "vllm"

    def __init__(self, options: BenchOptions) -> None:
        if not vllm_available():
            raise UserError(NOT_INSTALLED)
        self.options = options
        self.dtype_name = canonical_dtype(options.dtype) if options.dtype else "bfloat16"

    def run(self, target: Target, tick: Tick) -> Iterator[tuple[int, dict[str, Any]]]:
        options = self.options
        with tempfile.TemporaryDirectory(prefix="archscale-vllm-") as scratch:
            config_dir = Path(scratch) / "model"
            config_dir.mkdir()
            config = worker_config(target.hf_config, options.input_len + options.output_len)
            (config_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
            for batch in options.batch_sizes:
                yield batch, self._measure(config_dir, batch, Path(scratch) / f"result-{batch}.json", tick)

    def _command(self, config_dir: Path, batch: int, result: Path) -> list[str]:
        options = self.options
        command = [sys.executable, "-m", "archscale.bench.vllm_worker", "--config", str(config_dir),
                   "--batch-size", str(batch), "--input-len", str(options.input_len),
                   "--output-len", str(options.output_len), "--repeats", str(options.repeats),
                   "--tp", str(options.tp), "--dtype", self.dtype_name, "--seed", str(options.seed),
                   "--result", str(result)]
        return command + (["--enforce-eager"] if options.enforce_eager else [])

    def _environment(self) -> dict[str, str]:
        """The parent's environment, offline, with this archscale importable first."""
        import archscale

        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
        root = str(Path(archscale.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        return env

    def _measure(self, config_dir: Path, batch: int, result_path: Path, tick: Tick) -> dict[str, Any]:
        """Run one worker; its JSON result, or a failure built from its exit and stderr."""
        options = self.options
        done = [0]

        def on_progress() -> None:
            done[0] += 1
            tick(1)

        returncode, lines = run_worker(self._command(config_dir, batch, result_path), self._environment(),
                                       options.worker_timeout_s, on_progress, options.verbose)
        tick(max(0, options.repeats - done[0]))
        measured = _read_result(result_path)
        if returncode is None and measured is None:
            measured = {"status": "failed", "error": f"worker timed out after {options.worker_timeout_s:.0f} s"}
        elif measured is None:
            measured = {"status": "failed", "error": error_line(lines, returncode)}
        elif returncode not in (0, None) and measured.get("status") == "ok":
            measured = {"status": "failed", "error": f"worker exited with code {returncode} after writing a result"}
        return self._fields(measured)

    def _fields(self, measured: dict[str, Any]) -> dict[str, Any]:
        """Keep the record fields the worker wrote; add the GPU key and dtype."""
        keep = {"tokens_per_s", "output_tokens_per_s", "tokens_per_s_std", "output_tokens", "device_name",
                "torch_version", "vllm_version", "dtype", "status", "error"}
        fields = {k: v for k, v in measured.items() if k in keep}
        device = fields.get("device_name")
        fields["gpu"] = self.options.gpu or (gpu_key_for_device(device) if device else None)
        fields.setdefault("dtype", self.dtype_name)
        if fields.get("status") != "ok":
            return failed(fields.get("error") or "worker failed", **{k: v for k, v in fields.items()
                                                                     if k not in ("status", "error")})
        return fields


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_worker(command: list[str], env: dict[str, str], timeout_s: float, on_progress, verbose: bool = False
               ) -> tuple[int | None, list[str]]:
    """Run a worker, pumping its stderr; returns (exit code or None on timeout, stderr lines without progress).

    The worker's stdout (vLLM's log) is discarded unless ``verbose``, when it
    and stderr are echoed to this process's stderr.
    """
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=2 if verbose else subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    def pump() -> None:
        for line in process.stderr:
            if line.startswith(PROGRESS_PREFIX):
                on_progress()
                continue
            tail.append(line.rstrip("\n"))
            if verbose:
                sys.stderr.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode: int | None = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        returncode = None
    except BaseException:  # Ctrl-C: take the worker and its engine processes down with us
        _kill_group(process)
        raise
    _signal_group(process, signal.SIGKILL)  # engine processes a crashed worker left behind would hold GPU memory
    reader.join(timeout=10)
    return returncode, list(tail)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the worker's process group, give it a grace period, then SIGKILL what is left of it."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
