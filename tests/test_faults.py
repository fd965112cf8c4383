"""Faults outside the user's input: a read-only folder, a full disk, a corrupt results store.

Each ends in one line on stderr and exit 2, loses no finished work, and the
next command (the same one with --resume, or with another path) recovers.

Where this machine lets the tests mount a small tmpfs (root with mount
rights), the full disk and the read-only folder are real file systems; the
same failures are also injected at the write call (torch's checkpoint writer,
the runs table's flush to disk), so the behaviour is tested everywhere. Root
ignores chmod, so without a mountable tmpfs the read-only tests are skipped
with that reason (the refusal of a file where a folder is expected is tested
in test_bad_inputs.py on every machine).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from archscale.shapes.architecture import Architecture
from archscale.cli.cmd_train import default_run_dir
from archscale.fit.runs import TRAINED_RUN_COLUMNS
from archscale.train.config import TrainConfig, write_config_dir
from conftest import DATA
from test_bad_inputs import assert_refused, snapshot

TINY = Architecture(2, 64, 4, 2, 16, 128, vocab_size=256, name="tiny")
TINY_TRAIN = TrainConfig(tokens=4096, seq_len=64, batch_size=8, micro_batch_size=4, lr_max=3e-3, warmup_steps=1,
                         eval_every=0, eval_tokens=1024, checkpoint_every=2, log_every=2)
CHECKPOINT_BYTES = 1_320_292  # TINY's checkpoint.pt (model, AdamW moments, RNG): the full-disk tmpfs is sized from it
TRAIN = ("--device", "cpu", "--no-progress")


@pytest.fixture
def tiny_cfg(tmp_path, corpus_cache, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
    monkeypatch.chdir(tmp_path)
    return write_config_dir(tmp_path / "tiny", TINY, TINY_TRAIN)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size, read_only=False)`` mounts a small tmpfs under tmp_path, or skips saying why it cannot."""
    mounted: list[Path] = []

    def mount(name: str, size: str, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; the injected-fault test covers this case")
        target = tmp_path / name
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                        "the injected-fault test covers this case")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def remount(target: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(target)], check=True)


def fill(folder: Path) -> Path:
    """Write a filler file until the file system is full; return it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture
def readonly_dir(tmp_path, tmpfs):
    """A folder this process cannot write: chmod for a normal user, a read-only tmpfs for root (chmod does not stop root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    yield tmpfs("ro", "1m", read_only=True)


# ---- a read-only output folder -------------------------------------------------------
def test_read_only_folder_is_refused_before_fitting_and_another_out_recovers(cli, tmp_path, readonly_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(DATA / "chinchilla_epoch.csv", "runs.csv")
    before = snapshot(tmp_path)
    result = cli("fit", "runs.csv", "--where", "loss < 3.42", "--out", readonly_dir / "fit.json")
    assert_refused(result, f"cannot write in {readonly_dir}")
    assert ("read-only file system" if os.geteuid() == 0 else "permission denied") in result.err
    assert snapshot(tmp_path) == before
    assert cli("fit", "runs.csv", "--where", "loss < 3.42", "--out", "fit.json").code == 0


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
def test_a_folder_the_permission_bits_allow_but_the_kernel_refuses_is_refused_before_any_output(cli, tmp_path):
    """/sys passes root's permission check and refuses every new file: the output policy tries a file, so a
    search with --out there stops before its --plot (another folder) is drawn, naming the flag."""
    plot = tmp_path / "search.png"
    result = cli("search", "--fit", DATA / "fits" / "dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11",
                 "--layers", "16", "--match", "llama-3.2-1b", "--out", "/sys/search.json", "--plot", plot)
    assert_refused(result, "--out: cannot write in /sys")
    assert not plot.exists()


def test_read_only_runs_table_folder_is_refused_before_training(cli, tiny_cfg, readonly_dir):
    before = snapshot(tiny_cfg.parent)
    assert_refused(cli("train", tiny_cfg, "--runs", readonly_dir / "runs.csv", *TRAIN), f"cannot write in {readonly_dir}")
    assert snapshot(tiny_cfg.parent) == before  # not a step trained: no run folder


def test_read_only_store_folder_is_refused_before_measuring(cli, tmp_path, readonly_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--store", readonly_dir / "s.sqlite")
    assert_refused(result, f"cannot write in {readonly_dir}")


# ---- a full disk ----------------------------------------------------------------------
def test_disk_full_at_a_checkpoint_keeps_the_last_one_and_resume_finishes(cli, tiny_cfg, tmpfs):
    disk = tmpfs("disk", str(int(1.6 * CHECKPOINT_BYTES)))  # the first checkpoint fits; the second's temporary does not
    run = disk / "run"
    result = cli("train", tiny_cfg, "--out", run, "--runs", tiny_cfg.parent / "runs.csv", *TRAIN)
    assert_refused(result, f"{run / 'checkpoint.pt'}: cannot write (disk full")
    assert f"the last checkpoint in {run} is kept" in result.err and "--resume" in result.err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2  # the finished work, intact
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    remount(disk, "16m")
    resumed = cli("train", tiny_cfg, "--out", run, "--runs", tiny_cfg.parent / "runs.csv", "--resume", *TRAIN)
    assert resumed.code == 0, resumed.err
    assert "nan" not in resumed.out and len(pd.read_csv(tiny_cfg.parent / "runs.csv")) == 1


def test_injected_checkpoint_writer_failure_reads_as_disk_full(cli, tiny_cfg, monkeypatch):
    """torch.save's own message for a full disk, injected at the second checkpoint; the resume then finishes."""
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr("archscale.io.files.free_bytes", lambda folder: 0)
    run = default_run_dir(tiny_cfg)  # where train puts a run without --out
    result = cli("train", tiny_cfg, *TRAIN)
    assert_refused(result, f"{run / 'checkpoint.pt'}: cannot write (disk full")
    assert "inline_container" not in result.err and f"the last checkpoint in {run} is kept" in result.err
    monkeypatch.setattr(torch, "save", real_save)
    assert cli("train", tiny_cfg, "--resume", *TRAIN).code == 0


def test_disk_full_at_the_runs_table_keeps_the_run_and_resume_records_it(cli, tiny_cfg, tmpfs):
    disk = tmpfs("disk", "256k")
    runs = disk / "runs.csv"
    filler = fill(disk)
    run = default_run_dir(tiny_cfg)  # where train puts a run without --out
    result = cli("train", tiny_cfg, "--runs", runs, *TRAIN)
    assert_refused(result, f"{runs}: cannot write (disk full")
    assert f"the run is complete in {run}" in result.err and "--resume" in result.err
    assert not runs.exists() and (run / "checkpoint.pt").exists()
    filler.unlink()
    resumed = cli("train", tiny_cfg, "--runs", runs, "--resume", *TRAIN)
    assert resumed.code == 0, resumed.err
    assert "nan tokens/s" not in resumed.out and " tokens/s" in resumed.out  # the throughput is kept in the checkpoint
    assert len(pd.read_csv(runs)) == 1


def test_injected_disk_full_at_the_runs_table(cli, tiny_cfg, monkeypatch):
    """The runs table's fsync fails with ENOSPC (as on a full disk); the resume appends the row with its tokens/s."""
    real_fsync = os.fsync

    def fsync(fd):
        if "runs.csv" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc/self/fd to tell the runs table's file descriptor apart")
    runs = tiny_cfg.parent / "team" / "runs.csv"
    runs.parent.mkdir()
    monkeypatch.setattr(os, "fsync", fsync)
    result = cli("train", tiny_cfg, "--runs", runs, *TRAIN)
    assert_refused(result, f"{runs}: cannot write (disk full")
    assert "the run is complete" in result.err and sorted(p.name for p in runs.parent.iterdir()) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    resumed = cli("train", tiny_cfg, "--runs", runs, "--resume", *TRAIN)
    assert resumed.code == 0 and "nan" not in resumed.out
    table = pd.read_csv(runs)
    assert list(table.columns) == list(TRAINED_RUN_COLUMNS)  # the schema the pre-flight check holds tables to
    assert len(table) == 1 and table["tokens_per_s"].iloc[0] > 0


def test_disk_full_while_writing_a_fit_leaves_nothing_and_a_retry_succeeds(cli, tmp_path, tmpfs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(DATA / "chinchilla_epoch.csv", "runs.csv")
    disk = tmpfs("disk", "128k")
    filler = fill(disk)
    result = cli("fit", "runs.csv", "--where", "loss < 3.42", "--out", disk / "fit.json", "--plot", disk / "fit.png")
    assert_refused(result, "cannot write (disk full")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no half-written file, no temporary
    filler.unlink()
    assert cli("fit", "runs.csv", "--where", "loss < 3.42", "--out", disk / "fit.json").code == 0


def test_full_disk_before_a_bench_is_refused_before_measuring(cli, tmp_path, tmpfs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    disk = tmpfs("disk", "512k")
    store = disk / "s.sqlite"
    common = ("--backend", "roofline", "--gpu", "h100-sxm", "--store", store, "--no-progress")
    assert cli("bench", "llama-3.2-1b", *common).code == 0
    filler = fill(disk)
    before = store.read_bytes()
    result = cli("bench", "llama-3.2-3b", *common)
    assert_refused(result, f"{store}: cannot open (disk full")
    assert "nothing was measured" in result.err and store.read_bytes() == before
    filler.unlink()
    assert cli("bench", "llama-3.2-3b", *common).code == 0


def test_disk_filling_during_a_bench_keeps_the_records_already_stored(cli, tmp_path, tmpfs, monkeypatch):
    from archscale.bench import store as store_module

    monkeypatch.chdir(tmp_path)
    disk = tmpfs("disk", "512k")
    store = disk / "s.sqlite"
    common = ("--backend", "roofline", "--gpu", "h100-sxm", "--store", store, "--no-progress")
    real_append, fillers = store_module.append, []

    def append_then_fill(path, records):  # the disk fills up right after the first record is stored
        count = real_append(path, records)
        if not fillers:
            fillers.append(fill(disk))
        return count

    monkeypatch.setattr(store_module, "append", append_then_fill)
    result = cli("bench", "llama-3.2-1b", "llama-3.2-3b", "qwen3-4b", *common)
    assert_refused(result, f"{store}: cannot write (disk full")
    assert "1 record measured before this one is kept" in result.err
    monkeypatch.setattr(store_module, "append", real_append)
    fillers[0].unlink()
    assert list(store_module.load_results(store)["name"]) == ["llama-3.2-1b"]  # the finished record survived
    assert cli("bench", "llama-3.2-3b", "qwen3-4b", *common).code == 0
    assert list(store_module.load_results(store)["name"]) == ["llama-3.2-1b", "llama-3.2-3b", "qwen3-4b"]


# ---- a corrupt store before a bench -----------------------------------------------------
def _damage(kind: str, store: Path) -> None:
    data = bytearray(store.read_bytes())
    if kind == "truncated":
        store.write_bytes(bytes(data[: len(data) // 2 + 100]))
    elif kind == "overwritten page":
        page = int.from_bytes(data[16:18], "big") or 65536
        data[page: page + 200] = b"\xff" * 200  # the results table's root page
        store.write_bytes(bytes(data))
    else:
        store.write_bytes(b"garbage, not SQLite" * 50)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "overwritten page"])
def test_corrupt_store_is_refused_before_measuring_and_a_new_store_works(cli, tmp_path, monkeypatch, damage):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.sqlite"
    for name in ("llama-3.2-1b", "llama-3.2-3b", "qwen3-4b", "qwen2.5-7b"):
        assert cli("bench", name, "--backend", "roofline", "--gpu", "h100-sxm", "--store", store).code == 0
    with sqlite3.connect(store) as connection:  # the append closes cleanly: no WAL file is left to damage instead
        assert connection.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 4
    _damage(damage, store)
    before = snapshot(tmp_path)

    def measured(*args, **kwargs):
        raise AssertionError("a benchmark ran although the store was corrupt")

    monkeypatch.setattr("archscale.bench.roofline_backend.RooflineBackend.run", measured)
    result = cli("bench", "surefire-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--store", store)
    assert_refused(result, f"--store {store}: ")
    assert "nothing was measured" in result.err and "move it aside" in result.err
    assert snapshot(tmp_path) == before  # the damaged store is left as it was, for recovery tools
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    fresh = cli("bench", "surefire-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--store", tmp_path / "new.sqlite",
                "--json")
    assert fresh.code == 0 and json.loads(fresh.out)[0]["status"] == "ok"


# ---- a full disk leaves nothing new behind, and names the user's path -------------------------------
def leave_free(folder: Path, free: int) -> Path:
    """Fill the file system under ``folder`` until ``free`` bytes are left; return the filler."""
    filler = folder / "filler"
    info = os.statvfs(folder)
    with open(filler, "wb") as out:
        out.write(b"\0" * max(0, info.f_bavail * info.f_frsize - free))
    return filler


@pytest.mark.parametrize("free", [0, 4096, 16384, 40960])
def test_disk_full_at_a_new_store_leaves_no_file(tmpfs, free):
    """SQLite fails at different steps as the disk fills (a 0-byte file; a header with -wal and -shm; a rollback
    that SQLite had already done, which hid the full disk): each time the error is the full disk, naming the store,
    and the store it was creating is gone."""
    from archscale.bench.records import make_record
    from archscale.bench.store import append

    disk = tmpfs("disk", "256k")
    leave_free(disk, free)
    workload = {"batch_size": 1, "input_len": 8, "output_len": 4, "repeats": 1, "tp": 1}
    with pytest.raises(OSError) as failure:
        append(disk / "s.sqlite", [make_record(TINY, "t", "torch", workload, {"gpu": "cpu", "tokens_per_s": 1.0})])
    assert failure.value.errno == errno.ENOSPC and failure.value.filename == str(disk / "s.sqlite")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_new_store_on_a_full_disk_is_refused_before_measuring(cli, tmp_path, tmpfs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    disk = tmpfs("disk", "256k")
    fill(disk)
    result = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--store", disk / "s.sqlite")
    assert_refused(result, f"{disk / 's.sqlite'}: cannot create (disk full")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_injected_disk_full_at_a_new_store_leaves_no_file_or_folder(cli, tmp_path, monkeypatch):
    """The store's first append fails after SQLite created the file: no 0-byte store, no folder made for it."""
    from archscale.bench import store as store_module

    def full(connection):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(store_module, "_ensure_table", full)
    before = snapshot(tmp_path)
    result = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--store", "new/s.sqlite",
                 "--no-progress")
    assert_refused(result, "new/s.sqlite: cannot write (disk full")
    assert "no record was stored in new/s.sqlite" in result.err
    assert snapshot(tmp_path) == before


def failing_fsync(monkeypatch, at: int = 1) -> None:
    """The ``at``-th file flushed to disk (and every later one) fails as on a full disk."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_injected_disk_full_while_emitting_names_the_emit_folder_and_leaves_it_out(cli, tmp_path, monkeypatch):
    """The error named the staging folder (emit/.emit-XXXX/...) the user never gave, and left an empty emit/."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(DATA / "fits" / "dissertation_1b_mult.json", "fit.json")
    search = ("search", "--fit", "fit.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--match",
              "llama-3.2-1b", "--top-k", "2")
    before = snapshot(tmp_path)
    failing_fsync(monkeypatch, at=2)  # cand-01's config.json is written, its train.json is not
    result = cli(*search, "--emit", "emit")
    assert_refused(result, "emit/cand-01/train.json: cannot write (disk full")
    assert ".emit-" not in result.err and snapshot(tmp_path) == before
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert cli(*search, "--emit", "emit").code == 0  # an earlier set, then a failing emit over it: the set is kept
    before = snapshot(tmp_path)
    failing_fsync(monkeypatch)
    assert_refused(cli(*search, "--emit", "emit"), "emit/cand-01/config.json: cannot write (disk full")
    assert snapshot(tmp_path) == before


def test_injected_disk_full_while_exporting_leaves_no_folder(cli, tiny_cfg, monkeypatch):
    """model.safetensors is written, config.json is not: neither stays, nor the hf/ folder made for them."""
    from archscale.train.loop import train

    train(tiny_cfg, device="cpu", progress=False)
    before = snapshot(tiny_cfg.parent)
    failing_fsync(monkeypatch, at=2)
    result = cli("export", tiny_cfg / "run", "--out", "hf")
    assert_refused(result, "hf/config.json: cannot write (disk full")
    assert "nothing was exported" in result.err and snapshot(tiny_cfg.parent) == before
    monkeypatch.undo()
    monkeypatch.chdir(tiny_cfg.parent)
    assert cli("export", tiny_cfg / "run", "--out", "hf").code == 0


def _full_disk_at_the_result(write_json):
    """``write_json`` as it runs when the disk fills while it writes: its flush to disk fails with ENOSPC."""
    def write(path, document):
        real_fsync = os.fsync

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        os.fsync = no_space
        try:
            write_json(path, document)
        finally:
            os.fsync = real_fsync
    return write


def test_a_search_whose_last_output_fails_leaves_none_of_its_outputs(cli, tmp_path, monkeypatch):
    """The plot and the emitted configs are written before the result JSON; a full disk at the JSON used to leave
    them behind, a plot and configs of a search that reported failure. Now none of them is left."""
    import archscale.cli.cmd_search as cmd_search

    monkeypatch.setattr(cmd_search, "write_json", _full_disk_at_the_result(cmd_search.write_json))
    out = tmp_path / "out"
    result = cli("search", "--fit", DATA / "fits" / "dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11",
                 "--layers", "16", "--top-k", "2", "--out", out / "search.json", "--plot", out / "pareto.png",
                 "--emit", out / "configs")
    assert_refused(result, "search.json: cannot write (disk full")
    assert "removed what it had written (--plot, --emit); fix that and run the command again" in result.err
    assert not out.exists()  # the folder the policy created for them goes too, once empty
    monkeypatch.undo()
    assert cli("search", "--fit", DATA / "fits" / "dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11",
               "--layers", "16", "--top-k", "2", "--out", out / "search.json").code == 0


def test_a_fit_whose_result_fails_keeps_a_plot_that_was_there_and_says_so(cli, tmp_path, monkeypatch):
    import archscale.cli.cmd_fit as cmd_fit

    monkeypatch.chdir(tmp_path)
    Path("fit.png").write_bytes(b"an earlier plot")
    monkeypatch.setattr(cmd_fit, "write_json", _full_disk_at_the_result(cmd_fit.write_json))
    result = cli("fit", DATA / "chinchilla_epoch.csv", "--law", "chinchilla", "--where", "loss < 3.42",
                 "--out", "fit.json", "--plot", "fit.png")
    assert_refused(result, "fit.json: cannot write (disk full")
    assert "; --plot fit.png existed before and may have been replaced; fix that" in result.err
    assert Path("fit.png").exists() and not Path("fit.json").exists()
