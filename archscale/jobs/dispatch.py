"""Run a study's configs as jobs: in this process, as submitit jobs on this machine, or on a Slurm cluster.

A *study* (``archscale sweep``; ``archscale bench --executor ...``) is a list
of :class:`Task`: one config each, a module-level function and its arguments.
The function does the work and writes its rows itself, through the appends
that already survive concurrent writers (the runs table's locked rename, the
bench store's SQLite transactions), so jobs on many nodes can finish in any
order. It returns a small dict: ``{"status": "done" | "failed", "cause": ...,
"recovery": ...}`` plus whatever the study wants to show.

Executors (``DispatchOptions.executor``):

* ``inline``: each task is called in this process, one after another. This is
  the default on one machine: one config at a time is what a few cores (and a
  throughput measurement) want, there is no interpreter start per config, and
  the training loop's own step-by-step progress bar shows.
* ``local``: submitit's ``LocalExecutor``: each task is a job in its own
  process on this machine, ``max_parallel`` at a time (default 1), with the
  job folder, logs and states a Slurm study has. A crash, a segfault or the
  kernel's OOM killer then ends one config, not the study.
* ``slurm``: submitit's ``SlurmExecutor``: each task is a batch job with
  :class:`~archscale.jobs.slurm.Resources`. What the cluster cannot give is refused
  before anything is submitted (:func:`archscale.jobs.slurm.check_cluster`).

Whatever runs the tasks, the study keeps ``JOBS_DIR/study.json``: one record
per task with its state (queued, running, done, failed), job id, log and,
for a failure, its cause and how to recover. Resubmitting the same study
(the same command) skips tasks the caller found finished, re-attaches to jobs
still queued or running (no duplicate submission), and submits the rest; a
task that failed is tried again. One study is driven by one process at a
time (a lock in ``JOBS_DIR``); ``study_status`` reads it from anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from archscale.jobs import slurm
from archscale.io.errors import UserError, describe_failure, is_out_of_memory, one_line
from archscale.io.files import read_json, write_json
from archscale.jobs.slurm import Resources

EXECUTORS = ("inline", "local", "slurm")
# a record's states; "not submitted" only in study_status, for a task no process has taken up
STATES = ("not submitted", "queued", "running", "done", "failed")
STUDY_FILE = "study.json"
LOCK_FILE = ".lock"
SUBMITIT_DIR = "submitit"
LOGS_DIR = "logs"
FORMAT_VERSION = 1
# A Slurm job gone from the queue may take a moment to show its result file on a shared filesystem.
RESULT_GRACE_S = 20.0
# submitit's LocalExecutor kills a job after timeout_min (default 2 minutes): give local jobs a week unless told.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
SLURM_POLL_MAX_S = 5.0
NO_LIMIT_MIN = 365 * 24 * 60  # a Slurm job's time limit in a partition without one
RETRY = "fix the cause, then run the same command again (finished configs are skipped)"
MEMORY_RETRY = ("give each job more memory (fewer jobs at once with --max-parallel, on Slurm --job-mem) or use smaller "
                "configs, then run the same command again (finished configs are skipped)")
VMSTAT = Path("/proc/vmstat")
"""Where Linux counts the processes its out-of-memory killer has killed (``oom_kill``)."""


# ---- what a study is made of -----------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One config of a study.

    ``key`` names the task across resubmissions (a config's name and the hash
    of its recipe, so changing the recipe makes a new task). ``finished`` is
    set when the caller found the work already done (e.g. ``"in runs table"``);
    such a task is reported, never run. ``lost_recovery`` tells the user what
    to do when a job vanishes without a result (killed, cancelled, timed out).
    """

    key: str
    name: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    finished: str | None = None
    lost_recovery: str = "run the same command again to rerun it"


@dataclass
class TaskRecord:
    """What the study knows about one task; ``study.json`` holds one per task key."""

    key: str
    name: str
    state: str
    executor: str | None = None
    job_id: str | None = None
    log: str | None = None
    cause: str | None = None
    recovery: str | None = None
    note: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    updated: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskRecord":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        record = cls(**known)
        record.result = dict(record.result or {})
        return record

    def line(self) -> str:
        """One line for a terminal: ``name: state (job N) ...``."""
        job = f" (job {self.job_id})" if self.job_id and self.executor != "inline" else ""
        text = f"{self.name}: {self.state}{job}"
        if self.note:
            text += f", {self.note}"
        if self.state == "failed" and self.cause:
            text += f": {self.cause}"
            if self.recovery:
                text += f"; to recover: {self.recovery}"
        return text


@dataclass(frozen=True)
class DispatchOptions:
    """How to run a study's tasks (see the module docstring for the executors).

    ``max_parallel`` caps jobs in flight (local default 1; Slurm default: all,
    the scheduler queues them). ``wait=False`` (Slurm only) submits and
    returns; run the same command again, or ``study_status``, to follow it.
    Jobs are looked at every ``poll_s`` seconds; on Slurm (one ``squeue`` a
    look) the interval grows to ``SLURM_POLL_MAX_S`` while nothing changes.
    """

    executor: str = "inline"
    jobs_dir: Path = Path("archscale.jobs")
    resources: Resources = Resources()
    max_parallel: int | None = None
    wait: bool = True
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise UserError(f"--executor {self.executor!r}: choose {', '.join(EXECUTORS)}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise UserError(f"--max-parallel must be at least 1, got {self.max_parallel}")
        res = self.resources
        for flag, value in (("--job-gpus", res.gpus), ("--job-cpus", res.cpus), ("--job-time", res.time_min)):
            if value is not None and value < (0 if flag == "--job-gpus" else 1):
                raise UserError(f"{flag} must be positive, got {value}")
        if res.mem_gb is not None and res.mem_gb <= 0:
            raise UserError(f"--job-mem must be positive, got {res.mem_gb:g}")
        if self.executor == "inline":
            given = [flag for flag, value in (("--partition", res.partition), ("--job-gpus", res.gpus), ("--job-cpus", res.cpus),
                                              ("--job-mem", res.mem_gb), ("--job-time", res.time_min),
                                              ("--max-parallel", self.max_parallel)) if value is not None]
            if given:
                raise UserError(f"{given[0]} applies to jobs: add --executor local or --executor slurm")
        if self.executor == "local":
            for flag, value in (("--partition", res.partition), ("--job-mem", res.mem_gb)):
                if value is not None:
                    raise UserError(f"{flag} applies to --executor slurm only")
        if not self.wait and self.executor != "slurm":
            raise UserError("--no-wait applies to --executor slurm (inline and local jobs run under this process)")
        if not self.wait and self.max_parallel is not None:
            raise UserError("--max-parallel needs this process to wait for jobs; drop --no-wait or --max-parallel")

    @property
    def parallel_limit(self) -> int | None:
        if self.max_parallel is not None:
            return self.max_parallel
        return 1 if self.executor == "local" else None

    def checked(self) -> "DispatchOptions":
        """Check everything that can be checked before a job is submitted; return the options to submit with.

        One-line UserError on the first problem. On Slurm, a job with no
        ``--job-time`` asks for its partition's time limit (a year where it
        has none): submitit needs a limit to handle Slurm's warning signal
        (see :class:`JobCall`), and submitit's own default is 5 minutes.
        """
        if self.jobs_dir.exists() and not self.jobs_dir.is_dir():
            raise UserError(f"--jobs-dir {self.jobs_dir}: exists and is not a directory")
        if self.executor == "slurm":
            partition = slurm.check_cluster(self.resources)
            if self.resources.time_min is None:
                limit = partition.time_limit_min or NO_LIMIT_MIN
                return replace(self, resources=replace(self.resources, time_min=limit))
        elif self.executor == "local":
            _local_gpu_slots(self.resources.gpus, self.parallel_limit or 1)
            _check_local_cpus(self.resources.cpus, self.parallel_limit or 1)
        return self


# ---- what a job runs ----------------------------------------------------------------------------
def run_task(fn: Callable[..., dict[str, Any]], kwargs: Mapping[str, Any], threads: int | None = None,
             log: str | None = None) -> dict[str, Any]:
    """Call a task's function as a job does: its failure becomes a result, so the study goes on.

    A :class:`UserError` is the cause as it would be printed. Anything else
    (a bug, a crash inside torch) keeps its traceback in ``log`` (inline) or
    in the job's stderr log, and its last line becomes the cause.
    ``threads`` (the job's CPUs) caps torch's and OpenMP's threads, so jobs
    sharing a node do not fight over its cores.
    """
    threads = threads or _allocated_cpus()
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules or _importable("torch"):
            import torch

            torch.set_num_threads(threads)
    try:
        result = dict(fn(**kwargs))
    except UserError as exc:
        return {"status": "failed", "cause": str(exc), "recovery": RETRY}
    except Exception as exc:
        if type(exc).__name__ == "UncompletedJobError":  # submitit's handler of Slurm's signal before the time limit
            return {"status": "failed", "cause": f"the job reached its time limit ({one_line(exc)})",
                    "recovery": "give jobs more time (--job-time), then run the same command again"}
        described = describe_failure(exc)  # out of memory, disk full, ...: the one line the CLI would print
        if described is not None:
            recovery = MEMORY_RETRY if is_out_of_memory(exc) else RETRY
            return {"status": "failed", "cause": described, "recovery": recovery}
        text = traceback.format_exc()
        if log is not None:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            Path(log).write_text(text)
        else:
            sys.stderr.write(text)
        where = log or "the job's log"
        return {"status": "failed", "cause": f"{type(exc).__name__}: {one_line(exc)} (traceback in {where})", "recovery": RETRY}
    result.setdefault("status", "done")
    return result


class JobCall:
    """What a submitit job runs: :func:`run_task` on one task, and how to run it again.

    submitit calls :meth:`checkpoint` when Slurm signals the job before its
    time limit or a pre-emption, then requeues the job with the call it
    returns: the same one, since every task resumes by itself (training from
    its last checkpoint, a bench with the batch sizes still missing). After
    ``max_num_timeout`` (3) time-outs submitit gives up and the task fails
    with "the job reached its time limit".
    """

    def __init__(self, fn: Callable[..., dict[str, Any]], kwargs: Mapping[str, Any], threads: int | None) -> None:
        self.fn, self.kwargs, self.threads = fn, dict(kwargs), threads

    def __call__(self) -> dict[str, Any]:
        return run_task(self.fn, self.kwargs, self.threads)

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(JobCall(self.fn, self.kwargs, self.threads))


def _allocated_cpus() -> int | None:
    """CPUs Slurm gave this job (so torch does not start one thread per core of a shared node)."""
    value = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    return int(value) if value and value.isdigit() else None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- the study folder ---------------------------------------------------------------------------
class StudyFolder:
    """``JOBS_DIR``: ``study.json`` (the records), ``submitit/`` (job pickles and logs), ``logs/`` (inline tracebacks)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = self.path / STUDY_FILE

    @property
    def submitit_dir(self) -> Path:
        return self.path / SUBMITIT_DIR

    def load(self) -> dict[str, TaskRecord]:
        if not self.file.exists():
            return {}
        document = read_json(self.file)
        tasks = document.get("tasks", {}) if isinstance(document, dict) else None
        if not isinstance(tasks, dict):
            raise UserError(f"{self.file}: not an archscale study file (no 'tasks' object); move it away to start afresh")
        return {key: TaskRecord.from_dict({**value, "key": key}) for key, value in tasks.items() if isinstance(value, dict)}

    def save(self, records: Mapping[str, TaskRecord]) -> None:
        tasks = {key: {k: v for k, v in asdict(record).items() if k != "key"} for key, record in records.items()}
        write_json(self.file, {"version": FORMAT_VERSION, "tasks": tasks})

    def busy(self) -> bool:
        """Whether a process is driving this study now (it holds the lock)."""
        try:
            with open(self.path / LOCK_FILE, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
        except FileNotFoundError:
            return False
        except BlockingIOError:
            return True
        return False

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Only one process drives a study: a second would submit the same configs again."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path}: another archscale process is running this study; "
                                "watch it with --status, or wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# ---- running a study ----------------------------------------------------------------------------
Event = Callable[[TaskRecord], None]


@dataclass
class _Flight:
    """A submitted job this process is watching."""

    task: Task
    record: TaskRecord
    job: Any = None  # the submitit job, when this process submitted it
    gpus: tuple[int, ...] = ()  # local GPU slot it holds
    gone_since: float | None = None
    oom_kills: int | None = None  # the kernel's out-of-memory kill count when this process submitted it (local)


class _Runner:
    """One run of a study: triage, then run inline or submit and watch jobs, recording every change."""

    def __init__(self, tasks: Sequence[Task], options: DispatchOptions, on_event: Event | None) -> None:
        self.tasks, self.options = list(tasks), options
        self.on_event = on_event or (lambda record: None)
        self.folder = StudyFolder(options.jobs_dir)
        self.records: dict[str, TaskRecord] = {}
        self.flights: dict[str, _Flight] = {}
        self.executor: Any = None
        self.free_gpus: list[tuple[int, ...]] = []

    # -- records --
    def _set(self, record: TaskRecord) -> None:
        record.updated = _now()
        self.records[record.key] = record
        self.folder.save(self.records)
        self.on_event(record)

    def run(self) -> list[TaskRecord]:
        with self.folder.lock():
            self.records = self.folder.load()
            todo = self._triage()
            if self.options.executor == "inline":
                self._run_inline(todo)
                todo = []
            self._run_jobs(todo)  # also waits for jobs an earlier run of this study left in flight
        return [self.records[task.key] for task in self.tasks]

    def _triage(self) -> list[Task]:
        """Report finished tasks, re-attach to jobs still in flight, return the tasks to run."""
        todo = []
        in_queue = self._slurm_queue() if any(self._in_flight(r, "slurm") for r in self.records.values()) else {}
        for task in self.tasks:
            old = self.records.get(task.key)
            if task.finished is not None:
                self._set(TaskRecord(task.key, task.name, "done", executor=old.executor if old else None,
                                     job_id=old.job_id if old else None, log=old.log if old else None,
                                     note=f"skipped: {task.finished}", result=old.result if old else {}))
            elif old is not None and self._still_running(old, in_queue):
                self.flights[task.key] = _Flight(task, old)
                self._set(replace(old, name=task.name))
            else:
                todo.append(task)
                self._set(TaskRecord(task.key, task.name, "queued", note="waiting to be submitted"))
        return todo

    @staticmethod
    def _in_flight(record: TaskRecord, executor: str) -> bool:
        return record.executor == executor and record.state in ("queued", "running") and bool(record.job_id)

    def _slurm_queue(self) -> dict[str, str]:
        try:
            return slurm.queue_states()
        except (RuntimeError, OSError) as exc:
            raise UserError(f"this study has Slurm jobs in flight but squeue failed ({exc}); is the controller reachable?") from None

    def _still_running(self, record: TaskRecord, in_queue: Mapping[str, str]) -> bool:
        if self._in_flight(record, "slurm"):
            return record.job_id in in_queue
        if self._in_flight(record, "local"):
            return _local_job_alive(record.job_id)
        return False

    # -- inline --
    def _run_inline(self, todo: list[Task]) -> None:
        logs = self.folder.path / LOGS_DIR
        for task in todo:
            record = TaskRecord(task.key, task.name, "running", executor="inline")
            self._set(record)
            log = logs / f"{task.key}.log"
            try:
                result = run_task(task.fn, task.kwargs, log=str(log))
            except KeyboardInterrupt:
                self._set(replace(record, state="failed", cause="interrupted (Ctrl-C)", recovery=task.lost_recovery))
                raise
            self._finish(record, result, log=str(log) if log.exists() else None)

    def _finish(self, record: TaskRecord, result: Mapping[str, Any], log: str | None = None) -> None:
        result = dict(result)
        status = result.pop("status", "done")
        cause, recovery = result.pop("cause", None), result.pop("recovery", None)
        note = result.pop("note", None)
        failed = status != "done"
        self._set(replace(record, state="failed" if failed else "done", cause=cause if failed else None,
                          recovery=(recovery or RETRY) if failed else None, note=note, result=result,
                          log=log or record.log))

    # -- local and Slurm jobs --
    def _run_jobs(self, todo: list[Task]) -> None:
        limit = self.options.parallel_limit
        if todo:
            self.executor = _make_executor(self.options, self.folder.submitit_dir)
        if todo and self.options.executor == "local":
            self.free_gpus = _local_gpu_slots(self.options.resources.gpus, limit or 1)
        pending = list(todo)
        delay = self.options.poll_s
        try:
            while pending or self.flights:
                while pending and (limit is None or len(self.flights) < limit):
                    self._submit(pending.pop(0))
                if not self.options.wait and not pending:
                    return
                changed = self._poll()
                slow = any(f.record.executor == "slurm" for f in self.flights.values())
                cap = SLURM_POLL_MAX_S if slow else self.options.poll_s
                delay = self.options.poll_s if changed else min(delay * 1.5, max(cap, self.options.poll_s))
                if self.flights or pending:
                    time.sleep(delay)
        except KeyboardInterrupt:
            self._interrupted()
            raise

    def _submit(self, task: Task) -> None:
        options, executor = self.options, self.executor
        gpus: tuple[int, ...] = ()
        if options.executor == "local":
            gpus = self.free_gpus.pop(0) if self.free_gpus else ()
            executor.update_parameters(gpus_per_node=len(gpus), visible_gpus=list(gpus))
        else:
            executor.update_parameters(job_name=f"archscale-{task.name}"[:64])
        threads = options.resources.cpus
        try:
            job = executor.submit(JobCall(task.fn, task.kwargs, threads))
        except Exception as exc:  # sbatch refused this one (a limit reached since the check): record it, go on
            self.free_gpus.extend([gpus] if gpus else [])
            self._set(TaskRecord(task.key, task.name, "failed", executor=options.executor,
                                 cause=f"submission failed: {one_line(exc)}", recovery=RETRY))
            return
        record = TaskRecord(task.key, task.name, "queued" if options.executor == "slurm" else "running",
                            executor=options.executor, job_id=str(job.job_id), log=str(job.paths.stderr))
        oom_kills = _oom_kills() if options.executor == "local" else None
        self.flights[task.key] = _Flight(task, record, job, gpus, oom_kills=oom_kills)
        self._set(record)

    def _poll(self) -> bool:
        """Update every job in flight; True when something changed."""
        changed = False
        queue = self._poll_queue()
        for key, flight in list(self.flights.items()):
            state = self._job_state(flight, queue)
            if state in ("queued", "running"):
                flight.gone_since = None
                if state != flight.record.state:
                    flight.record = replace(flight.record, state=state, note=None)
                    self._set(flight.record)
                    changed = True
                continue
            if state == "unknown":  # squeue failed this time: ask again later
                continue
            outcome = _read_outcome(self.folder.submitit_dir, flight.record.job_id)
            if outcome is None and flight.record.executor == "slurm":
                flight.gone_since = flight.gone_since or time.monotonic()
                if time.monotonic() - flight.gone_since < RESULT_GRACE_S:
                    continue
            self._land(flight, outcome)
            changed = True
        return changed

    def _poll_queue(self) -> dict[str, str] | None:
        """squeue's view of this user's jobs; None when it failed this time (then nothing is concluded)."""
        if not any(f.record.executor == "slurm" for f in self.flights.values()):
            return {}
        try:
            return slurm.queue_states()
        except (RuntimeError, OSError):
            return None

    @staticmethod
    def _job_state(flight: _Flight, queue: dict[str, str] | None) -> str:
        record = flight.record
        if record.executor == "slurm":
            if queue is None:
                return "unknown"
            state = queue.get(record.job_id)
            return "ended" if state is None else slurm.study_state(state)
        if flight.job is not None:  # a local job this process started: submitit polls its process
            return "ended" if flight.job.done() else "running"
        return "running" if _local_job_alive(record.job_id) else "ended"

    def _land(self, flight: _Flight, outcome: tuple[str, Any] | None) -> None:
        """A job has ended: record its result, or why there is none."""
        del self.flights[flight.task.key]
        if flight.gpus:
            self.free_gpus.append(flight.gpus)
        record, how = flight.record, None
        if outcome is not None and outcome[0] == "success" and isinstance(outcome[1], Mapping):
            self._finish(record, outcome[1])
            return
        if outcome is not None:  # the job's function raised past run_task (cannot unpickle, SystemExit, ...)
            cause = f"the job raised: {_last_line(str(outcome[1]))}"
        else:
            how = slurm.ended_state(record.job_id) if record.executor == "slurm" else _local_end(flight)
            last = _last_line(_tail(record.log))
            cause = (f"the job ended without a result ({how or 'killed or crashed'})"
                     + (f"; last log line: {last}" if last else ""))
        recovery = flight.task.lost_recovery
        if outcome is None and record.executor == "slurm" and how and how.startswith("TIMEOUT"):
            recovery = f"give jobs more time (--job-time), then {recovery}"
        elif outcome is None and record.executor == "slurm" and how and how.startswith("OUT_OF_MEMORY"):
            recovery = f"give jobs more memory (--job-mem), then {recovery}"
        elif outcome is None and how == LOCAL_OOM:
            recovery = f"run fewer jobs at once (--max-parallel) or smaller configs, then {recovery}"
        self._set(replace(record, state="failed", cause=cause, recovery=recovery))

    def _interrupted(self) -> None:
        """Ctrl-C: local jobs die with this process; Slurm jobs go on and stay recorded as in flight."""
        for flight in list(self.flights.values()):
            if flight.record.executor == "local":
                _stop_local_job(flight.record.job_id)
                self._set(replace(flight.record, state="failed", cause="interrupted (Ctrl-C): the job was stopped",
                                  recovery=flight.task.lost_recovery))


def run_study(tasks: Sequence[Task], options: DispatchOptions, on_event: Event | None = None) -> list[TaskRecord]:
    """Run the tasks not yet finished and return one record per task, in order.

    Pass options from :meth:`DispatchOptions.checked` (the CLI does): it refuses what
    the cluster cannot run before anything is written. ``on_event`` sees every
    change of a record (the progress view). KeyboardInterrupt propagates after
    the records are saved.
    """
    keys = [task.key for task in tasks]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise UserError(f"two configs of this study are the same task ({duplicate}); give each a distinct name")
    return _Runner(tasks, options, on_event).run()


def study_status(tasks: Sequence[Task], jobs_dir: str | Path) -> list[TaskRecord]:
    """Each task's state now, from ``study.json`` and the scheduler; writes nothing."""
    folder = StudyFolder(Path(jobs_dir))
    records, busy = folder.load(), folder.busy()
    slurm_ids = [r.job_id for r in records.values() if r.executor == "slurm" and r.state in ("queued", "running")]
    queue: dict[str, str] | None = {}
    if slurm_ids:
        try:
            queue = slurm.queue_states()
        except (RuntimeError, OSError):
            queue = None
    out = []
    for task in tasks:
        old = records.get(task.key)
        if task.finished is not None:
            out.append(TaskRecord(task.key, task.name, "done", executor=old.executor if old else None,
                                  job_id=old.job_id if old else None, note=task.finished,
                                  result=old.result if old else {}))
        elif old is None:
            out.append(TaskRecord(task.key, task.name, "not submitted", note=_other_recipe_note(task, records)))
        elif old.state in ("queued", "running") and old.executor in ("slurm", "local") and old.job_id:
            out.append(_live_state(old, queue, Path(jobs_dir) / SUBMITIT_DIR))
        elif old.state in ("queued", "running") and not busy:  # in this process's hands, but that process is gone
            out.append(replace(old, state="failed", cause="the process running the study ended before this config finished",
                               recovery="run the same command again") if old.state == "running"
                       else replace(old, state="not submitted", note=None))
        else:
            out.append(old)
    return out


def _other_recipe_note(task: Task, records: Mapping[str, TaskRecord]) -> str | None:
    """When the study holds a record of this config under another key (another recipe: other --tokens, --seed or
    --out), say so: --status asked without the flags the study ran with would call finished work not submitted."""
    others = [record for key, record in records.items() if record.name == task.name and key != task.key]
    if not others:
        return None
    return (f"the study has a record of {task.name} for other flags ({others[-1].state}): give --status the flags "
            "the study ran with (a sweep's --tokens, --seed, --data, --out; a bench's sizes and lengths)")


def _live_state(record: TaskRecord, queue: dict[str, str] | None, submitit_dir: Path) -> TaskRecord:
    if record.executor == "slurm":
        if queue is None:
            return replace(record, note="squeue failed: state as last recorded")
        if record.job_id in queue:
            return replace(record, state=slurm.study_state(queue[record.job_id]))
    elif _local_job_alive(record.job_id):
        return replace(record, state="running")
    outcome = _read_outcome(submitit_dir, record.job_id)
    if outcome is not None and outcome[0] == "success" and isinstance(outcome[1], Mapping):
        result = dict(outcome[1])
        failed = result.get("status", "done") != "done"
        return replace(record, state="failed" if failed else "done", cause=result.get("cause"), recovery=result.get("recovery"))
    return replace(record, state="failed", cause="the job ended without a result (killed or crashed)",
                   recovery="run the same command again")


# ---- submitit --------------------------------------------------------------------------------------
def _make_executor(options: DispatchOptions, folder: Path) -> Any:
    """A submitit executor for ``options`` (imported here: inline studies never need submitit)."""
    import submitit

    res = options.resources
    folder.mkdir(parents=True, exist_ok=True)
    if options.executor == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=res.time_min or LOCAL_TIMEOUT_MIN)
        return executor
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(partition=res.partition, time=res.time_min, cpus_per_task=res.cpus,
                               mem=f"{max(1, round(res.mem_gb * 1024))}M" if res.mem_gb else None,
                               gpus_per_node=res.gpus or None)
    return executor


def _read_outcome(folder: Path, job_id: str | None) -> tuple[str, Any] | None:
    """The ``("success", result)`` or ``("error", traceback)`` a submitit job left, or None if it left none."""
    if not job_id:
        return None
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(folder, job_id=job_id, task_id=0).result_pickle
    if not path.exists():
        return None
    try:
        outcome = pickle_load(path)
    except Exception as exc:  # truncated or written by another version
        return ("error", f"cannot read {path}: {type(exc).__name__}")
    return outcome if isinstance(outcome, tuple) and len(outcome) == 2 else None


LOCAL_OOM = ("the kernel's out-of-memory killer ended a process while it ran, most likely this job: the machine ran out "
             "of memory")


def _local_end(flight: _Flight) -> str | None:
    """How a local job that left no result ended, where the machine tells: killed for memory, else None.

    submitit's local controller does not keep its worker's exit status, so the
    signal that ended it is lost; Linux's count of out-of-memory kills is not.
    """
    now = _oom_kills()
    if flight.oom_kills is not None and now is not None and now > flight.oom_kills:
        return LOCAL_OOM
    return None


def _oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed since boot (None where it does not say)."""
    try:
        for line in VMSTAT.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _local_job_alive(job_id: str | None) -> bool:
    """Whether a local job (its controller's pid) is still running, also one started by an earlier process."""
    if not job_id or not job_id.isdigit():
        return False
    try:
        command = Path(f"/proc/{job_id}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit.local._local" in command


def _stop_local_job(job_id: str | None) -> None:
    """Kill a local job's worker processes; its submitit controller then ends by itself.

    (submitit's own cancel sends the controller SIGINT, which prints a
    KeyboardInterrupt traceback onto this terminal.)
    """
    if not job_id or not _local_job_alive(job_id):
        return
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ProcessLookupError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == job_id:
                os.kill(int(stat.parent.name), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _local_job_alive(job_id) and time.monotonic() < deadline:
        time.sleep(0.05)


def _local_gpu_slots(gpus_per_job: int | None, parallel: int) -> list[tuple[int, ...]]:
    """GPU ids for each local job slot: disjoint sets of ``gpus_per_job``, or every visible GPU when not asked.

    submitit's LocalExecutor sets CUDA_VISIBLE_DEVICES for each job; left to
    itself it would give every job GPU 0 (or, asked for none, hide them all).
    """
    visible = _visible_gpus()
    if not gpus_per_job:
        return [tuple(visible)] * parallel
    if gpus_per_job * parallel > len(visible):
        raise UserError(f"--job-gpus {gpus_per_job} x --max-parallel {parallel} needs {gpus_per_job * parallel} GPUs; "
                        f"this machine shows {len(visible)}")
    return [tuple(visible[i * gpus_per_job:(i + 1) * gpus_per_job]) for i in range(parallel)]


def _check_local_cpus(cpus_per_job: int | None, parallel: int) -> None:
    """Refuse local jobs that ask for more CPUs than this machine has.

    Each local job runs ``cpus_per_job`` torch threads and ``parallel`` jobs
    run at once, so more threads than CPUs would only make every job slower
    (and its throughput figures wrong), never give it the CPUs it asked for.
    """
    if not cpus_per_job:
        return
    have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus_per_job > have:
        raise UserError(f"--job-cpus {cpus_per_job}: this machine has {have} CPUs for local jobs; "
                        f"ask for at most {have}")
    if cpus_per_job * parallel > have:
        raise UserError(f"--job-cpus {cpus_per_job} x --max-parallel {parallel} needs {cpus_per_job * parallel} CPUs; "
                        f"this machine has {have}: lower one of them")


def _visible_gpus() -> list[int]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        items = [item.strip() for item in listed.split(",") if item.strip()]
        if all(item.isdigit() for item in items):
            return [int(item) for item in items]
    if not _importable("torch"):
        return []
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _tail(path: str | None, lines: int = 20) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            return b"\n".join(handle.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    """The last line that says something (submitit's own INFO lines say nothing about the failure)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line and "submitit INFO" not in line and "submitit WARNING" not in line:
            return one_line(line)
    return ""
