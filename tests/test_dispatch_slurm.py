"""Studies on a real Slurm cluster (the single-node one .ci/setup-slurm.sh starts), not a mock.

Skipped where no Slurm answers; failed instead when ARCHSCALE_REQUIRE_SLURM=1
(as .ci/run sets). A 3-config training sweep and a 2-config bench run as
Slurm jobs; one job is killed mid-run; resubmitting the same command
resumes it and ends with exactly one row per config. Requests the cluster
cannot satisfy are refused in one line with nothing submitted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parent))
from dispatch_helpers import (  # noqa: E402
    BENCH_FLAGS, SHAPES, SHORT, bench_rows, finish, records, running_job, runs_table, start_cli, wait_for,
    write_bench_configs, write_study_configs,
)
from helpers import one_line_error  # noqa: E402

JOB = ("--executor", "slurm", "--job-cpus", "1", "--job-mem", "1", "--job-time", "10")


def kill(job: str) -> None:
    """SIGKILL the job's process at once, as the OOM killer would (``scancel --signal=KILL JOB.0``: its step).

    A plain ``scancel JOB`` sends SIGTERM, which submitit's jobs ignore (they
    wait for Slurm's pre-emption signal), then SIGKILL after KillWait; on a
    loaded machine these tiny runs could finish in between.
    """
    subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], check=True)


def slurm_problem() -> str | None:
    """Why this machine has no usable Slurm cluster, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm client (sinfo, sbatch) on PATH; .ci/setup-slurm.sh installs and starts one"
    done = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"sinfo failed: {done.stderr.strip()}"
    if not any(state.strip() in ("idle", "mix", "alloc") for state in done.stdout.split()):
        return f"no Slurm node is up (sinfo: {done.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = slurm_problem()
    if problem:
        if os.environ.get("ARCHSCALE_REQUIRE_SLURM") == "1":
            pytest.fail(f"ARCHSCALE_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def queue() -> set[str]:
    done = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_slurm_sweep_job_killed_mid_run_resumes_on_resubmission(cluster, tmp_path, corpus_data, cli, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configs = write_study_configs(tmp_path / "configs")
    runs, jobs = tmp_path / "runs.csv", tmp_path / "runs.csv.jobs"
    flags = ("--data", corpus_data, "--runs", runs, "--device", "cpu", *JOB, "--no-progress")
    sweep = start_cli("sweep", configs, *flags)
    job = wait_for(lambda: running_job(jobs, "c"), "config c's job to run", process=sweep)
    wait_for(lambda: (configs / "c" / "run" / "checkpoint.pt").exists(), "c's first checkpoint", process=sweep)
    kill(job)
    code, out, err = finish(sweep)
    assert code == 1, err
    assert "a: trained" in out and "b: trained" in out
    assert f"c: failed (job {job}): the job ended without a result (FAILED" in err
    assert "resumes from its last checkpoint" in records(jobs)["c"]["recovery"]
    assert len(runs_table(runs)) == 2

    again = cli("sweep", configs, *flags, "--json")
    assert again.code == 0, again.err
    outcome = json.loads(again.out)
    assert [o["status"] for o in outcome] == ["skipped: in runs table", "skipped: in runs table", "resumed"]
    assert outcome[2]["job_id"] != job
    table = runs_table(runs)
    assert len(table) == 3 and table["recipe_hash"].is_unique
    assert table.set_index("name").loc["c", "steps"] == 160


def test_slurm_bench_job_killed_mid_run_measures_only_what_is_missing(cluster, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    small, big = write_bench_configs(tmp_path)
    store, jobs = tmp_path / "bench.sqlite", tmp_path / "bench.sqlite.jobs"
    flags = (*BENCH_FLAGS, "--out", store, *JOB)
    bench = start_cli("bench", small, big, *flags)
    job = wait_for(lambda: running_job(jobs, "big"), "config big's job to run", process=bench)
    wait_for(lambda: len(bench_rows(store, "big")) >= 1, "big's first row", process=bench)
    kill(job)
    code, out, err = finish(bench)
    assert code == 1, err
    assert "small: done" in out and f"big: failed (job {job}): the job ended without a result (FAILED" in err
    assert set(bench_rows(store, "big")["batch_size"]) != {1, 16, 32}, "the kill came after big had finished"

    again = cli("bench", small, big, *flags)
    assert again.code == 0, again.err
    rows = bench_rows(store)
    assert (rows["status"] == "ok").all()
    assert sorted(zip(rows["name"], rows["batch_size"])) == [(n, b) for n in ("big", "small") for b in (1, 16, 32)]


def test_slurm_job_signalled_before_its_time_limit_is_requeued_and_resumes(cluster, tmp_path, corpus_data, monkeypatch):
    """Slurm's warning signal (USR2, sent before a time limit or a pre-emption): submitit requeues the job, same id."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configs = write_study_configs(tmp_path / "configs")
    shutil.rmtree(configs / "a")
    shutil.rmtree(configs / "b")
    runs, jobs = tmp_path / "runs.csv", tmp_path / "runs.csv.jobs"
    sweep = start_cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--device", "cpu", *JOB, "--no-progress")
    job = wait_for(lambda: running_job(jobs, "c"), "config c's job to run", process=sweep)
    wait_for(lambda: (configs / "c" / "run" / "checkpoint.pt").exists(), "c's first checkpoint", process=sweep)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    # requeued, the job starts again once its old credential expires (AuthInfo=cred_expire=10 in .ci/setup-slurm.sh)
    code, out, err = finish(sweep)
    assert code == 0, err
    assert f"c: done (job {job}), resumed" in err and "c: resumed" in out  # the same job, started again, resumed
    stdout = Path(records(jobs)["c"]["log"]).with_suffix(".out")  # submitit's own log lines: JOB_0_log.out
    assert f"Requeued job {job}" in stdout.read_text()
    assert runs_table(runs).set_index("name").loc["c", "steps"] == 160


def test_slurm_no_wait_then_status_then_the_same_command_attaches(cluster, tmp_path, corpus_data, cli, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configs = write_study_configs(tmp_path / "configs")
    shutil.rmtree(configs / "c")
    runs = tmp_path / "runs.csv"
    flags = ("--data", corpus_data, "--runs", runs, "--device", "cpu", *JOB, "--no-progress")
    submitted = cli("sweep", configs, *flags, "--no-wait", "--json")
    assert submitted.code == 0, submitted.err
    first = {o["name"]: o for o in json.loads(submitted.out)}
    assert {o["status"] for o in first.values()} <= {"queued", "running"} and all(o["job_id"] for o in first.values())
    assert "follow them" in submitted.err

    status = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--status", "--json")
    assert status.code == 0, status.err
    assert {r["state"] for r in json.loads(status.out)} <= {"queued", "running", "done"}

    attached = cli("sweep", configs, *flags, "--json")  # waits for the same jobs: submits nothing new
    assert attached.code == 0, attached.err
    after = {o["name"]: o for o in json.loads(attached.out)}
    assert {name: o["job_id"] for name, o in after.items()} == {name: o["job_id"] for name, o in first.items()}
    assert len(runs_table(runs)) == 2
    done = cli("sweep", configs, "--data", corpus_data, "--runs", runs, "--status")
    assert done.code == 0 and done.out.count("done") == 2


def test_slurm_job_with_two_processes_trains_under_torchrun(cluster, tmp_path, corpus_data, cli, monkeypatch):
    from archscale.train.config import write_config_dir

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_config_dir(tmp_path / "configs" / "a", SHAPES["a"], SHORT)
    runs = tmp_path / "runs.csv"
    refused = cli("sweep", tmp_path / "configs", "--data", corpus_data, "--runs", runs, "--executor", "slurm", "--nproc-per-run", "2")
    assert one_line_error(refused) and "must be a multiple of micro_batch_size 4 x 2 processes" in refused.err
    write_config_dir(tmp_path / "configs" / "a", SHAPES["a"], replace(SHORT, micro_batch_size=2))
    result = cli("sweep", tmp_path / "configs", "--data", corpus_data, "--runs", runs, "--device", "cpu", "--executor", "slurm",
                 "--job-cpus", "2", "--job-mem", "2", "--nproc-per-run", "2", "--no-progress", "--json")
    assert result.code == 0, result.err
    assert [o["status"] for o in json.loads(result.out)] == ["trained"]
    record = records(tmp_path / "runs.csv.jobs")["a"]
    assert record["note"].startswith("trained by 2 processes (torchrun)")
    assert "-m torch.distributed.run --standalone --nproc_per_node=2" in Path(record["log"]).read_text()
    assert len(runs_table(runs)) == 1


@pytest.mark.parametrize("flags, message", [
    (("--partition", "gpu"), "--partition gpu: no such partition on this cluster (it has: debug, short)"),
    (("--job-cpus", "64"), "--job-cpus 64: no node in partition debug has more than"),
    (("--job-mem", "100000"), "--job-mem 100000: no node in partition debug has more than"),
    (("--job-gpus", "1"), "--job-gpus 1: nodes in partition debug have no GPUs"),
    (("--partition", "short", "--job-time", "5"), "--job-time 5 min: partition short allows at most 1 min"),
])
def test_slurm_refuses_what_the_cluster_cannot_give_and_submits_nothing(cluster, tmp_path, corpus_data, cli, flags, message):
    configs = write_study_configs(tmp_path / "configs")
    before = queue()
    result = cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--executor", "slurm", *flags)
    assert one_line_error(result) and message in result.err, result.err
    bench = cli("bench", configs / "a", "--store", tmp_path / "b.sqlite", "--executor", "slurm", *flags)
    assert one_line_error(bench) and message in bench.err, bench.err
    assert queue() <= before and sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_unreachable_slurm_controller_is_one_line(cluster, tmp_path, corpus_data, cli, monkeypatch):
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    gone = tmp_path / "gone.conf"  # the same cluster, but its controller's port has nobody listening
    gone.write_text(conf + "\nSlurmctldPort=9\nMessageTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(gone))
    configs = write_study_configs(tmp_path / "configs")
    result = cli("sweep", configs, "--data", corpus_data, "--runs", tmp_path / "runs.csv", "--executor", "slurm")
    assert one_line_error(result) and "cannot reach the Slurm controller" in result.err, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "gone.conf"]
