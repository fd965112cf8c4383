"""``archscale data prepare``, the embedded corpus and deterministic batches."""

from __future__ import annotations

import errno
import importlib.util
import json

import numpy as np
import pytest

from archscale.io.errors import UserError
from archscale.train import data as data_mod
from archscale.train.data import TokenDataset, default_data_dir, prepare

TEXT = "def f(x):\n    return x * 2  # doubling\n" * 60  # 2,400 bytes per file


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        (root / f"f{i}.txt").write_text(f"# file {i}\n" + TEXT)
    (root / "sub" / "g.py").write_text(TEXT)
    (root / ".hidden").write_text("secret\n" * 100)
    (root / "blob.bin").write_bytes(b"\0\1\2" * 100)
    return root


def test_prepare_a_directory(corpus, tmp_path, cli):
    out = tmp_path / "data"
    result = cli("data", "prepare", "--corpus", corpus, "--out", out, "--val-fraction", "0.1")
    assert result.code == 0, result.err
    meta = json.loads((out / "meta.json").read_text())
    expected = b"".join(p.read_bytes() for p in sorted([*corpus.glob("f*.txt"), corpus / "sub" / "g.py"]))
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 256 and meta["dtype"] == "uint16"
    assert meta["n_files"] == 6  # hidden and binary files skipped
    assert meta["n_tokens"] == len(expected) == meta["n_train"] + meta["n_val"]
    assert meta["n_val"] == int(np.ceil(0.1 * len(expected)))
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert bytes(np.concatenate([train, val]).astype(np.uint8)) == expected


def test_prepare_a_glob_and_repeated_corpus(corpus, tmp_path, cli):
    out = tmp_path / "data"
    result = cli("data", "prepare", "--corpus", str(corpus / "f*.txt"), "--corpus", corpus / "sub" / "g.py", "--out", out)
    assert result.code == 0, result.err
    assert json.loads((out / "meta.json").read_text())["n_files"] == 6


def test_a_val_fraction_that_starves_a_split_names_the_flag(tmp_path, cli):
    """The corpus was blamed ("--corpus: too small") when --val-fraction 0.99999 left the train split empty."""
    (tmp_path / "c.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 600)
    result = cli("data", "prepare", "--corpus", tmp_path / "c.txt", "--out", tmp_path / "data", "--val-fraction", "0.99999")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "--val-fraction 0.99999: leaves a split too small" in result.err and "train 0 /" in result.err


@pytest.mark.parametrize("content", ["", "tiny corpus\n"], ids=["empty", "too-small"])
def test_empty_or_tiny_corpus_is_a_one_line_error(tmp_path, cli, content):
    (tmp_path / "small.txt").write_text(content)
    out = tmp_path / "data"
    result = cli("data", "prepare", "--corpus", tmp_path / "small.txt", "--out", out)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1 and "too small" in result.err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "small.txt"]  # no temporary leftovers


def test_missing_corpus_is_a_one_line_error(tmp_path, cli):
    result = cli("data", "prepare", "--corpus", tmp_path / "nope" / "*.txt", "--out", tmp_path / "data")
    assert result.code == 2 and "no text files" in result.err
    result = cli("data", "prepare", "--corpus", tmp_path / "nope.txt", "--out", tmp_path / "data")
    assert result.code == 2 and "no such file" in result.err
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is not None, reason="tokenizers is installed")
def test_tokenizer_json_without_the_package_says_how_to_install(corpus, tmp_path, cli):
    (tmp_path / "tokenizer.json").write_text("{}")
    result = cli("data", "prepare", "--corpus", corpus, "--tokenizer", tmp_path / "tokenizer.json", "--out", tmp_path / "d")
    assert result.code == 2 and "pip install tokenizers" in result.err
    assert not (tmp_path / "d").exists()


def test_prepare_refuses_to_overwrite_a_foreign_directory(corpus, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(UserError, match="not a prepared data directory"):
        prepare([str(corpus)], out)


def test_embedded_corpus_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path / "cache"))
    first = default_data_dir()
    assert first.is_relative_to(tmp_path / "cache")
    meta = json.loads((first / "meta.json").read_text())
    assert meta["n_tokens"] >= data_mod.DEFAULT_CORPUS_BYTES and "stdlib" in meta["source"]
    stamp = (first / "train.bin").stat().st_mtime_ns
    assert default_data_dir() == first
    assert (first / "train.bin").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_batches_are_a_function_of_seed_and_step(corpus, tmp_path):
    prepare([str(corpus)], tmp_path / "data")
    train = TokenDataset(tmp_path / "data", "train", seq_len=32)
    again = TokenDataset(tmp_path / "data", "train", seq_len=32)
    np.testing.assert_array_equal(train.offsets(7, 3, 8), again.offsets(7, 3, 8))
    assert not np.array_equal(train.offsets(7, 3, 8), train.offsets(7, 4, 8))
    assert not np.array_equal(train.offsets(7, 3, 8), train.offsets(8, 3, 8))
    x, y = train.fetch(train.offsets(0, 0, 4))
    assert x.shape == y.shape == (4, 32)
    assert (x[:, 1:] == y[:, :-1]).all()  # targets are the inputs shifted by one
    assert train.offsets(0, 0, 1000).max() + 33 <= train.n_tokens


def test_a_split_smaller_than_two_sequences_is_refused(corpus, tmp_path):
    prepare([str(corpus)], tmp_path / "data")
    with pytest.raises(UserError, match="val split has .* fewer than two sequences"):
        TokenDataset(tmp_path / "data", "val", seq_len=2048)


def test_help_has_an_example(cli):
    result = cli("data", "prepare", "--help")
    assert result.code == 0 and "Examples" in result.out and "archscale data prepare --corpus" in result.out


def test_a_split_that_cannot_be_mapped_for_want_of_memory_says_so(corpus, tmp_path, monkeypatch):
    """Under memory pressure (a memory limit, many jobs at once) mapping train.bin fails with ENOMEM: that is not
    a reason to prepare the data again, which a file cut short is."""
    prepare([str(corpus)], tmp_path / "data")

    def out_of_memory(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    with monkeypatch.context() as patch:
        patch.setattr(data_mod.np, "memmap", out_of_memory)
        with pytest.raises(UserError) as excinfo:
            TokenDataset(tmp_path / "data", "train", seq_len=32)
    message = str(excinfo.value)
    assert "cannot map train.bin" in message and "out of memory (the data is fine)" in message
    assert "prepare the data again" not in message
    (tmp_path / "data" / "train.bin").write_bytes(b"\0\0")  # cut short: now preparing again is the remedy
    with pytest.raises(UserError, match="prepare the data again"):
        TokenDataset(tmp_path / "data", "train", seq_len=32)
