"""Studies as jobs without a cluster: the inline loop and submitit's local executor.

The same kill-and-resubmit story as on Slurm (tests/test_dispatch_slurm.py):
a job killed mid-run is recorded as failed with its cause, the rest of the
study goes on, and running the same command again resumes it and ends with
exactly one row per config. Also: a corrupt checkpoint skips one config, not
the sweep; bad dispatch flags are one line and exit 2 with nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from archscale.jobs import dispatch
from archscale.jobs.dispatch import DispatchOptions, StudyFolder, Task, run_study
from archscale.jobs.slurm import Resources, _gpus, parse_time_min

sys.path.insert(0, str(Path(__file__).parent))
from dispatch_helpers import (  # noqa: E402
    BENCH_FLAGS, bench_rows, finish, records, running_job, runs_table, start_cli, task_pids, wait_for,
    write_bench_configs, write_study_configs,
)
from helpers import one_line_error  # noqa: E402

CPUS = len(os.sched_getaffinity(0))


@pytest.fixture
def one_thread(one_thread, monkeypatch):
    """conftest's one torch thread, and OMP_NUM_THREADS=1 for the job processes a sweep starts (they inherit it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ---- inline: one corrupt checkpoint no longer stops the sweep ---------------------------------------
def test_corrupt_checkpoint_skips_that_config_and_says_how_to_recover(tmp_path, corpus_data, cli, one_thread):
    configs = write_study_configs(tmp_path / "configs")
    (configs / "c" / "run").mkdir()
    checkpoint = configs / "c" / "run" / "checkpoint.pt"
    checkpoint.write_bytes(b"PK\x03\x04 half a zip file")  # what a copy cut short leaves
    runs = tmp_path / "runs.csv"

    first = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--device", "cpu", "--no-progress", "--tokens", "768", "--json")
    assert first.code == 1
    outcome = {o["name"]: o for o in json.loads(first.out)}
    assert outcome["a"]["status"] == outcome["b"]["status"] == "trained"
    assert outcome["c"]["status"] == "failed" and str(checkpoint) in outcome["c"]["cause"]
    assert "cannot be loaded" in outcome["c"]["cause"] and f"move {checkpoint} away" in outcome["c"]["recovery"]
    assert "c: failed" in first.err and "to recover" in first.err
    recorded = records(runs.with_name("runs.csv.jobs"))
    assert recorded["c"]["state"] == "failed" and recorded["c"]["recovery"] == outcome["c"]["recovery"]
    assert len(runs_table(runs)) == 2

    checkpoint.rename(checkpoint.with_suffix(".corrupt"))  # the recovery it printed
    again = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--device", "cpu", "--no-progress", "--tokens", "768", "--json")
    assert again.code == 0, again.err
    assert [o["status"] for o in json.loads(again.out)] == ["skipped: in runs table", "skipped: in runs table", "trained"]
    table = runs_table(runs)
    assert len(table) == 3 and table["recipe_hash"].is_unique


def test_a_crashing_task_is_recorded_with_its_traceback_and_the_study_goes_on(tmp_path):
    tasks = [Task("boom-1", "boom", _raises, {}), Task("fine-1", "fine", _returns, {"value": 3})]
    seen = []
    result = run_study(tasks, DispatchOptions(jobs_dir=tmp_path / "jobs"), seen.append)
    assert [r.state for r in result] == ["failed", "done"]
    assert result[0].cause.startswith("ZeroDivisionError: division by zero (traceback in ")
    assert "ZeroDivisionError" in Path(result[0].log).read_text()
    assert result[1].result == {"value": 3}
    assert [(r.name, r.state) for r in seen] == [("boom", "queued"), ("fine", "queued"), ("boom", "running"),
                                                  ("boom", "failed"), ("fine", "running"), ("fine", "done")]


def _raises() -> dict:
    return {"never": 1 / 0}


def _out_of_memory() -> dict:
    raise MemoryError()


def test_a_task_out_of_memory_is_recorded_as_such_with_how_to_give_it_more(tmp_path):
    [record] = run_study([Task("big-1", "big", _out_of_memory, {})], DispatchOptions(jobs_dir=tmp_path / "jobs"))
    assert record.state == "failed" and record.cause.startswith("out of memory; ")
    assert "--max-parallel" in record.recovery and "--job-mem" in record.recovery


def _killed_for_memory(vmstat: str) -> dict:
    """What the kernel's out-of-memory killer does to a job: count one more kill, then SIGKILL it."""
    Path(vmstat).write_text("nr_free_pages 1024\noom_kill 8\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def test_a_local_job_the_oom_killer_ends_is_reported_as_out_of_memory(tmp_path, monkeypatch):
    """submitit's local controller drops its worker's exit status; the kernel's count of OOM kills tells instead."""
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1024\noom_kill 7\n")
    monkeypatch.setattr(dispatch, "VMSTAT", vmstat)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    options = DispatchOptions(executor="local", jobs_dir=tmp_path / "jobs", poll_s=0.05)
    [record] = run_study([Task("big-1", "big", _killed_for_memory, {"vmstat": str(vmstat)})], options.checked())
    assert record.state == "failed"
    assert record.cause.startswith("the job ended without a result (the kernel's out-of-memory killer ended a process "
                                   "while it ran, most likely this job: the machine ran out of memory)")
    assert record.recovery.startswith("run fewer jobs at once (--max-parallel) or smaller configs")


def _returns(value: int) -> dict:
    return {"value": value}


# ---- submitit's local executor: kill one job mid-run, resubmit --------------------------------------
def test_local_sweep_job_killed_mid_run_resumes_on_resubmission(tmp_path, corpus_data, cli, one_thread):
    configs = write_study_configs(tmp_path / "configs")
    runs, jobs = tmp_path / "runs.csv", tmp_path / "runs.csv.jobs"
    flags = ("--data", corpus_data, "--runs", runs, "--device", "cpu", "--executor", "local", "--max-parallel", "2",
             "--job-cpus", "1", "--no-progress")
    sweep = start_cli("sweep", configs, *flags)
    job = wait_for(lambda: running_job(jobs, "c"), "config c to start", process=sweep)
    wait_for(lambda: (configs / "c" / "run" / "checkpoint.pt").exists(), "c's first checkpoint", process=sweep)
    pids = wait_for(lambda: task_pids(job), "the process of c's job")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    code, out, err = finish(sweep)
    assert code == 1, err
    assert "a: trained" in out and "b: trained" in out and "c: failed" in out
    assert f"c: failed (job {job}): the job ended without a result" in err
    c = records(jobs)["c"]
    assert c["state"] == "failed" and "resumes from its last checkpoint" in c["recovery"]
    assert not (configs / "c" / "run" / "result.json").exists() and len(runs_table(runs)) == 2

    again = cli("sweep", configs, *flags, "--json")
    assert again.code == 0, again.err
    assert [o["status"] for o in json.loads(again.out)] == ["skipped: in runs table", "skipped: in runs table", "resumed"]
    table = runs_table(runs)
    assert len(table) == 3 and table["recipe_hash"].is_unique
    assert table.set_index("name").loc["c", "steps"] == 160  # the whole budget, across the kill


def test_local_bench_job_killed_between_batch_sizes_measures_only_what_is_missing(tmp_path, cli, one_thread):
    small, big = write_bench_configs(tmp_path)
    store, jobs = tmp_path / "bench.sqlite", tmp_path / "bench.sqlite.jobs"
    flags = (*BENCH_FLAGS, "--out", store, "--executor", "local")
    bench = start_cli("bench", small, big, *flags)
    job = wait_for(lambda: running_job(jobs, "big"), "config big to start", process=bench)
    wait_for(lambda: len(bench_rows(store, "big")) >= 1, "big's first row", process=bench)
    for pid in task_pids(job):
        os.kill(pid, signal.SIGKILL)
    code, out, err = finish(bench)
    assert code == 1, err
    assert "small: done" in out and f"big: failed (job {job}): the job ended without a result" in err
    measured_before = set(bench_rows(store, "big")["batch_size"])
    assert 1 in measured_before and measured_before != {1, 16, 32}, "the kill came after big had finished"

    again = cli("bench", small, big, *flags)
    assert again.code == 0, again.err
    assert "small: done (job" in again.out and "skipped: in the store" in again.out
    rows = bench_rows(store)
    assert (rows["status"] == "ok").all()
    assert sorted(zip(rows["name"], rows["batch_size"])) == [(n, b) for n in ("big", "small") for b in (1, 16, 32)]


def test_ctrl_c_stops_local_jobs_and_records_them(tmp_path, corpus_data, one_thread):
    configs = write_study_configs(tmp_path / "configs")
    for name in ("a", "b"):
        (configs / name).rename(tmp_path / name)
    jobs = tmp_path / "runs.csv.jobs"
    # --tokens 10M: c would train for minutes, so under load its job cannot finish before the Ctrl-C arrives
    sweep = start_cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--device", "cpu",
                      "--executor", "local", "--no-progress", "--tokens", "10M")
    job = wait_for(lambda: running_job(jobs, "c"), "config c to start", process=sweep)
    wait_for(lambda: task_pids(job), "the process of c's job")
    sweep.send_signal(signal.SIGINT)
    code, out, err = finish(sweep, timeout=60)
    assert code == 130 and "Traceback" not in err, err
    assert "c: failed" in err and "interrupted (Ctrl-C): the job was stopped" in err and "run the same command again" in err
    assert not task_pids(job) and controller_gone(job)  # no job left running behind the user's back
    assert records(jobs)["c"]["state"] == "failed"


def controller_gone(pid: str, within_s: float = 10.0) -> bool:
    """Whether a job's controller process has ended (gone, or a zombie waiting to be reaped), allowing it a few
    seconds to finish exiting on a loaded machine: what matters is that nothing is left running."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_status_shows_each_config_state(tmp_path, corpus_data, cli, one_thread):
    configs = write_study_configs(tmp_path / "configs")
    (configs / "c").rename(tmp_path / "c-later")
    runs = tmp_path / "runs.csv"
    assert cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--device", "cpu", "--no-progress").code == 0
    (tmp_path / "c-later").rename(configs / "c")
    status = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--status", "--json")
    assert status.code == 0, status.err
    assert [(r["name"], r["state"]) for r in json.loads(status.out)] == [("a", "done"), ("b", "done"), ("c", "not submitted")]
    assert not (configs / "c" / "run").exists()  # --status ran nothing
    # asked without the sweep's --tokens, the recipes differ: not submitted, but it says the study has them
    other = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--status", "--tokens", "999", "--json")
    notes = {r["name"]: r["note"] for r in json.loads(other.out)}
    assert "the study has a record of a for other flags (done)" in notes["a"] and notes["c"] is None


def test_status_does_not_check_this_machines_memory(tmp_path, corpus_data, cli, monkeypatch):
    """--status trains nothing (and the jobs may run elsewhere): a recipe too big for this machine's memory was
    refused there as it is before training."""
    from archscale.train import sweep as sweep_module

    def too_big(specs, device):
        raise AssertionError("--status checked the recipes against this machine's memory")

    monkeypatch.setattr(sweep_module, "check_recipes_fit", too_big)
    configs = write_study_configs(tmp_path / "configs")
    status = cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--status", "--json")
    assert status.code == 0, status.err
    assert {r["state"] for r in json.loads(status.out)} == {"not submitted"}


# ---- bad input: one line, exit 2, nothing submitted or written --------------------------------------
@pytest.mark.parametrize("flags, message", [
    (("--partition", "gpu"), "--partition applies to jobs: add --executor local or --executor slurm"),
    (("--executor", "local", "--partition", "gpu"), "--partition applies to --executor slurm only"),
    (("--executor", "local", "--no-wait"), "--no-wait applies to --executor slurm"),
    (("--executor", "slurm", "--job-time", "soon"), "--job-time 'soon': expected minutes"),
    (("--executor", "cloud",), "--executor 'cloud': choose inline, local, slurm"),
    (("--executor", "local", "--job-gpus", "2"), "--job-gpus 2 x --max-parallel 1 needs 2 GPUs"),
    (("--executor", "local", "--job-cpus", "1000"), f"--job-cpus 1000: this machine has {CPUS} CPUs for local jobs"),
    (("--executor", "local", "--job-cpus", str(CPUS), "--max-parallel", "2"),
     f"--job-cpus {CPUS} x --max-parallel 2 needs {2 * CPUS} CPUs; this machine has {CPUS}"),
])
def test_bad_dispatch_flags_are_one_line_and_write_nothing(tmp_path, corpus_data, cli, flags, message, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    configs = write_study_configs(tmp_path / "configs")
    result = cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", *flags)
    assert one_line_error(result) and message in result.err, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_no_slurm_client_is_one_line_and_submits_nothing(tmp_path, corpus_data, cli, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # a machine without sinfo/sbatch
    configs = write_study_configs(tmp_path / "configs")
    result = cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--executor", "slurm")
    assert one_line_error(result) and "`sinfo` is not on PATH" in result.err and "--executor local" in result.err
    bench = cli("bench", configs / "a", "--store", tmp_path / "b.sqlite", "--executor", "slurm")
    assert one_line_error(bench) and "no Slurm client here" in bench.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_a_second_process_cannot_drive_the_same_study(tmp_path, corpus_data, cli):
    configs = write_study_configs(tmp_path / "configs")
    folder = StudyFolder(tmp_path / "runs.csv.jobs")
    with folder.lock():
        result = cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--no-progress")
    assert one_line_error(result) and "another archscale process is running this study" in result.err
    assert not (tmp_path / "runs.csv").exists()


def test_bench_roofline_is_not_a_study(tmp_path, cli):
    result = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--executor", "local",
                 "--store", tmp_path / "b.sqlite")
    assert one_line_error(result) and "drop --executor" in result.err


# ---- reading what sinfo prints ----------------------------------------------------------------------
@pytest.mark.parametrize("text, minutes", [("infinite", None), ("30", 30), ("30:00", 30), ("1:30:00", 90),
                                           ("2-00:00:00", 2880), ("1-12", 2160), ("0:00:30", 1)])
def test_slurm_time_limits(text, minutes):
    assert parse_time_min(text) == minutes


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4),
                                        ("gpu:h100:4(S:0),gpu:h100:4(S:1)", 8), ("mps:100,gpu:2", 2)])
def test_slurm_gres_gpus(gres, gpus):
    assert _gpus(gres) == gpus


def test_sbatch_flags_mirror_the_request():
    flags = Resources(partition="gpu", gpus=8, cpus=32, mem_gb=1.5, time_min=90).sbatch_flags()
    assert flags == ["--partition=gpu", "--cpus-per-task=32", "--mem=1536M", "--gpus-per-node=8", "--time=90"]


def test_a_jobs_dir_that_is_a_file_names_the_flag(tmp_path, corpus_data, cli):
    """It was found only at the lock file, as "x.png/.lock: a file is in the way", without naming --jobs-dir."""
    configs = write_study_configs(tmp_path / "configs")
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG")
    result = cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--jobs-dir", image, "--status")
    assert one_line_error(result) and f"--jobs-dir {image}: {image} is a file, not a folder" in result.err
