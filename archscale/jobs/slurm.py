"""Talking to a Slurm cluster: can it run these jobs, and where are they now.

Why a module of its own: :mod:`archscale.jobs.dispatch` submits through submitit,
but two questions submitit does not answer well are answered here with the
cluster's own commands.

* Before anything is submitted (:func:`check_cluster`): is a controller
  reachable, does the partition exist and is it up, and can one of its nodes
  give a job the CPUs, memory, GPUs and time asked for? ``sinfo`` gives the
  partition's limits for clear one-line errors; ``sbatch --test-only`` then
  asks the scheduler itself, which knows every rule (QOS, account, gres names)
  this code does not. Slurm happily *queues* a job no node can ever run (it
  sits pending with reason ``PartitionTimeLimit`` or similar), so without this
  a mistake shows up hours later, or never.
* While jobs run (:func:`queue_states`, :func:`ended_state`): submitit reads
  job states with ``sacct``, which fails on clusters without accounting
  storage (the job then looks ``UNKNOWN`` forever, and a cancelled job never
  looks finished). ``squeue`` always works for queued and running jobs;
  ``scontrol`` (then ``sacct``) says how a finished one ended.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass

from archscale.io.errors import UserError

COMMAND_TIMEOUT_S = 60.0
# squeue states of a job that has not ended yet, and what a study calls them
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}


@dataclass(frozen=True)
class Resources:
    """What each job asks for. ``None`` leaves it to the cluster's default (partition default, 1 CPU, ...)."""

    partition: str | None = None
    gpus: int | None = None
    cpus: int | None = None
    mem_gb: float | None = None
    time_min: int | None = None

    def sbatch_flags(self) -> list[str]:
        """The same request as ``sbatch`` flags (for ``--test-only``)."""
        flags = []
        if self.partition:
            flags.append(f"--partition={self.partition}")
        if self.cpus:
            flags.append(f"--cpus-per-task={self.cpus}")
        if self.mem_gb:
            flags.append(f"--mem={max(1, round(self.mem_gb * 1024))}M")
        if self.gpus:
            flags.append(f"--gpus-per-node={self.gpus}")
        if self.time_min:
            flags.append(f"--time={self.time_min}")
        return flags


@dataclass(frozen=True)
class Partition:
    """One partition as ``sinfo`` reports it (the largest node of each kind it holds)."""

    name: str
    default: bool
    up: bool
    cpus: int | None  # most CPUs on one node; None if sinfo gave none
    mem_mb: int | None  # most memory on one node
    gpus: int  # most GPUs on one node
    time_limit_min: int | None  # None: no limit


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_time_min(text: str) -> int | None:
    """Slurm time (``infinite``, ``30``, ``1:30:00``, ``2-00:00:00``, ``1-12``) to minutes; None for no limit."""
    text = text.strip().lower()
    if text in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
        return int(days) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if len(parts) == 1:  # minutes
        return parts[0]
    if len(parts) == 2:  # minutes:seconds
        return parts[0] + (1 if parts[1] else 0)
    hours, minutes, seconds = parts[-3:]
    return hours * 60 + minutes + (1 if seconds else 0)


def _gpus(gres: str) -> int:
    """GPUs per node in a gres string: ``gpu:8``, ``gpu:a100:4(S:0-1)``, ``(null)``."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres):
        parts = re.sub(r"\(.*\)", "", item).split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _int(text: str) -> int | None:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else None


def partitions() -> list[Partition]:
    """Every partition, from one ``sinfo`` call; UserError when no controller answers."""
    for tool in ("sinfo", "sbatch", "squeue", "srun"):
        if shutil.which(tool) is None:
            raise UserError(f"--executor slurm: `{tool}` is not on PATH, so there is no Slurm client here "
                            "(use --executor local to run the jobs on this machine)")
    try:
        done = _run(["sinfo", "--noheader", "--format=%P|%a|%c|%m|%G|%l"])
    except subprocess.TimeoutExpired:
        raise UserError(f"--executor slurm: sinfo did not answer in {COMMAND_TIMEOUT_S:.0f} s; is slurmctld reachable?") from None
    if done.returncode != 0:
        raise UserError(f"--executor slurm: cannot reach the Slurm controller (sinfo: {_first_line(done.stderr) or 'exit ' + str(done.returncode)})")
    found: dict[str, Partition] = {}
    for line in done.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, avail, cpus, mem, gres, limit = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        old = found.get(name)
        part = Partition(name, default, avail.strip() == "up", _int(cpus), _int(mem), _gpus(gres), parse_time_min(limit))
        if old is not None:  # one line per kind of node: keep the largest of each
            part = Partition(name, default or old.default, part.up or old.up, _max(part.cpus, old.cpus),
                             _max(part.mem_mb, old.mem_mb), max(part.gpus, old.gpus), part.time_limit_min)
        found[name] = part
    if not found:
        raise UserError("--executor slurm: sinfo lists no partition on this cluster")
    return list(found.values())


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def check_cluster(resources: Resources) -> Partition:
    """Refuse, in one line, jobs this cluster cannot run; return the partition they will go to.

    Checks the partition's largest node against the request, then lets
    ``sbatch --test-only`` (which submits nothing) have the final word.
    """
    known = partitions()
    names = ", ".join(p.name for p in known)
    if resources.partition is None:
        default = next((p for p in known if p.default), None)
        if default is None:
            raise UserError(f"--executor slurm: this cluster has no default partition; choose one with --partition ({names})")
        part = default
    else:
        part = next((p for p in known if p.name == resources.partition), None)
        if part is None:
            raise UserError(f"--partition {resources.partition}: no such partition on this cluster (it has: {names})")
    where = f"partition {part.name}"
    if not part.up:
        raise UserError(f"--partition {part.name}: the partition is not up (sinfo says so); choose another ({names})")
    if resources.cpus and part.cpus is not None and resources.cpus > part.cpus:
        raise UserError(f"--job-cpus {resources.cpus}: no node in {where} has more than {part.cpus} CPUs")
    if resources.mem_gb and part.mem_mb is not None and resources.mem_gb * 1024 > part.mem_mb:
        raise UserError(f"--job-mem {resources.mem_gb:g}: no node in {where} has more than {part.mem_mb / 1024:.1f} GB of memory")
    if resources.gpus and resources.gpus > part.gpus:
        has = f"at most {part.gpus} GPUs" if part.gpus else "no GPUs (no gpu gres)"
        raise UserError(f"--job-gpus {resources.gpus}: nodes in {where} have {has}")
    if resources.time_min and part.time_limit_min is not None and resources.time_min > part.time_limit_min:
        raise UserError(f"--job-time {resources.time_min} min: {where} allows at most {part.time_limit_min} min")
    test = _run(["sbatch", "--test-only", "--job-name=archscale-check", *resources.sbatch_flags(), "--wrap=true"])
    if test.returncode != 0:
        reason = _first_line(test.stderr) or f"exit {test.returncode}"
        raise UserError(f"--executor slurm: Slurm would not accept these jobs in {where}: {reason}")
    return part


def queue_states() -> dict[str, str]:
    """Job id -> squeue state (``PENDING``, ``RUNNING``, ...) for this user's jobs still in the queue.

    Raises RuntimeError when squeue fails (a controller restart): the caller
    must not conclude that jobs have ended from a failed query.
    """
    try:
        done = _run(["squeue", "--noheader", f"--user={getpass.getuser()}", "--format=%i|%T"])
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"squeue did not answer in {COMMAND_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"squeue: {_first_line(done.stderr) or 'exit ' + str(done.returncode)}")
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state
    return states


def study_state(squeue_state: str) -> str:
    """A queued/running job's squeue state as a study state: ``queued`` or ``running``."""
    return "running" if squeue_state in RUNNING_STATES else "queued"


def ended_state(job_id: str) -> str | None:
    """How an ended job ended (``CANCELLED``, ``TIMEOUT``, ``OUT_OF_MEMORY``, ``FAILED``, ...), or None if forgotten.

    ``scontrol`` remembers a job for ``MinJobAge`` seconds after it ends;
    ``sacct`` answers longer where accounting is enabled.
    """
    try:
        return _ended_state(job_id)
    except subprocess.TimeoutExpired:
        return None


def _ended_state(job_id: str) -> str | None:
    done = _run(["scontrol", "show", "job", "--oneliner", job_id])
    if done.returncode == 0:
        match = re.search(r"\bJobState=(\S+)", done.stdout)
        if match:
            reason = re.search(r"\bReason=(\S+)", done.stdout)
            state = match.group(1)
            return state + (f" ({reason.group(1)})" if reason and reason.group(1) != "None" else "")
    if shutil.which("sacct"):
        done = _run(["sacct", "--noheader", "--allocations", "--parsable2", f"--jobs={job_id}", "--format=State"])
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split()[0]
    return None
