"""Token data: ``archscale data prepare`` and the batches the training loop reads.

A prepared data directory holds ``train.bin`` and ``val.bin`` (flat arrays
of token ids, ``uint16`` when the vocabulary fits, else ``uint32``, read
through ``numpy.memmap``) and ``meta.json`` (tokenizer, vocab_size, token
counts, source). The validation split is the last ``val_fraction`` of the
token stream, as nanoGPT does.

The byte tokenizer (vocabulary 256) needs nothing downloaded. A local
``tokenizer.json`` is read with the optional ``tokenizers`` package.

With no ``--data``, training uses the *embedded corpus*: a sorted, few-MB
subset of this Python's own standard-library ``.py`` sources, prepared once
into a cache directory (``$ARCHSCALE_CACHE`` or ``~/.cache/archscale``). It
is always there, needs no network, and is real text with structure a small
model can learn.

Batches are a pure function of ``(seed, step)`` (:meth:`TokenDataset.offsets`),
so a resumed run reads exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch

from archscale.io.errors import UserError, add_hint, failure_cause, is_out_of_memory
from archscale.io.files import current_umask, write_failure

META_FILE = "meta.json"
PREPARED_FILES = ("train.bin", "val.bin", META_FILE)
DEFAULT_CORPUS_BYTES = 4_000_000
MIN_SEQ_LEN_AT_PREPARE = 256  # prepare insists on two such sequences (+1 target) per split
FORMAT_VERSION = 1


# ---- tokenizers -----------------------------------------------------------------
class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, data: bytes) -> np.ndarray: ...


class ByteTokenizer:
    """One token per byte: vocabulary 256, no download, lossless for any file."""

    name = "byte"
    vocab_size = 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)


class HFTokenizer:
    """A local ``tokenizer.json`` through the optional ``tokenizers`` package."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError:
            raise UserError(f"--tokenizer {path}: reading tokenizer.json needs the tokenizers package "
                            "(pip install tokenizers), or use --tokenizer byte") from None
        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises its own exception types
            raise UserError(f"--tokenizer {path}: cannot be loaded: {str(exc).splitlines()[0]}") from None
        self.name = str(path.resolve())
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, data: bytes) -> np.ndarray:
        ids = self._tok.encode(data.decode("utf-8", errors="replace"), add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64)


def load_tokenizer(spec: str = "byte") -> Tokenizer:
    """``byte`` or a path to a ``tokenizer.json``."""
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"--tokenizer {spec}: no such file (give 'byte' or a path to a tokenizer.json)")
    return HFTokenizer(path)


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# ---- corpora --------------------------------------------------------------------
def collect_files(corpus: Iterable[str]) -> list[Path]:
    """Expand files, directories (recursively) and globs into a sorted, de-duplicated file list.

    Hidden files and files that look binary (a NUL byte in the first 8 KiB)
    are skipped in directories and globs; a binary file named explicitly is refused.
    """
    found: dict[Path, None] = {}
    for spec in corpus:
        if any(ch in spec for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
            files = [p for p in matches if p.is_file() and _looks_textual(p)]
        elif Path(spec).is_dir():
            files = [p for p in sorted(Path(spec).rglob("*")) if p.is_file() and _looks_textual(p)
                     and not any(part.startswith(".") for part in p.relative_to(spec).parts)]
        elif Path(spec).is_file():
            if not _looks_textual(Path(spec)):
                raise UserError(f"--corpus {spec}: is not text (a NUL byte in its first 8 KiB: an image, archive or "
                                "binary); give text files")
            files = [Path(spec)]
        else:
            raise UserError(f"--corpus {spec}: no such file, directory or glob match")
        if not files:
            raise UserError(f"--corpus {spec}: no text files found")
        found.update(dict.fromkeys(files))
    return list(found)


def _looks_textual(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return b"\0" not in handle.read(8192)
    except OSError:
        return False


def default_corpus_files(max_bytes: int = DEFAULT_CORPUS_BYTES) -> list[Path]:
    """The embedded corpus: the standard library's top-level ``.py`` files, sorted, up to ``max_bytes``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        if total >= max_bytes:
            break
        files.append(path)
        total += path.stat().st_size
    if not files:
        raise UserError(f"no standard-library sources found under {stdlib} for the embedded corpus; pass --data DIR "
                        "(see archscale data prepare --help)")
    return files


def cache_root() -> Path:
    """``$ARCHSCALE_CACHE`` or ``~/.cache/archscale``."""
    return Path(os.environ.get("ARCHSCALE_CACHE") or Path.home() / ".cache" / "archscale")


def default_data_dir() -> Path:
    """Prepare the embedded corpus once (byte tokens) and return its cached data directory."""
    files = default_corpus_files()
    fingerprint = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size};" for p in files).encode()).hexdigest()[:10]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = cache_root() / "data" / f"stdlib-py{version}-byte-{fingerprint}"
    if not (out / META_FILE).exists():
        prepare_files(files, out, ByteTokenizer(), val_fraction=0.05, source=f"python{version} stdlib *.py (embedded corpus)")
    return out


# ---- prepare --------------------------------------------------------------------
def prepare(corpus: Iterable[str], out_dir: str | Path, tokenizer: str = "byte", val_fraction: float = 0.05) -> dict:
    """Tokenize ``corpus`` (files, directories, globs) into ``out_dir``; return its meta."""
    corpus = list(corpus)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not corpus:
        raise UserError("--corpus: give at least one file, directory or glob")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / META_FILE).exists())):
        raise UserError(f"--out {out_dir}: exists and is not a prepared data directory; choose another --out")
    refuse_out_in_corpus(corpus, out_dir)
    tok = load_tokenizer(tokenizer)
    files = collect_files(corpus)
    prepared = [path for path in files if path.name == META_FILE and (path.parent / "train.bin").exists()]
    if prepared:
        raise UserError(f"--corpus {' '.join(corpus)}: takes in {prepared[0]}, part of an earlier prepare's output "
                        f"(prepared data, not text); move {prepared[0].parent} out of the corpus or narrow the corpus")
    return prepare_files(files, out_dir, tok, val_fraction, source=" ".join(corpus))


def refuse_out_in_corpus(corpus: Iterable[str], out_dir: Path) -> None:
    """Refuse an ``--out`` inside a folder the corpus reads whole: the next prepare of that corpus would take
    the output's ``meta.json`` for text and tokenize it with the rest."""
    out = out_dir.resolve()
    for spec in corpus:
        root = _corpus_folder(spec)
        if root is not None and (out == root.resolve() or root.resolve() in out.parents):
            raise UserError(f"--out {out_dir}: is inside --corpus {spec}, so the next prepare of that corpus would read "
                            f"this output's {META_FILE} as text; choose an --out outside {root}")


def _corpus_folder(spec: str) -> Path | None:
    """The folder a ``--corpus`` reads whole: a directory, or the fixed part of a recursive glob that matches
    the names ``prepare`` writes."""
    if any(ch in spec for ch in "*?["):
        if "**" not in spec or not any(fnmatch.fnmatch(name, Path(spec).name) for name in PREPARED_FILES):
            return None  # prepared data a pattern of fixed depth matches is refused once it exists (prepare)
        fixed = []
        for part in Path(spec).parts:
            if any(ch in part for ch in "*?["):
                break
            fixed.append(part)
        return Path(*fixed) if fixed else Path(".")
    return Path(spec) if Path(spec).is_dir() else None


def prepare_files(files: list[Path], out_dir: Path, tok: Tokenizer, val_fraction: float, source: str) -> dict:
    """Tokenize into a temporary sibling directory, check it, then rename it into place.

    Nothing appears at ``out_dir`` unless the whole corpus was tokenized and
    is big enough; two processes preparing the same cache both succeed.
    """
    tmp: Path | None = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would make shared data private
        meta = _tokenize_into(files, tmp, tok, val_fraction, source)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / META_FILE).exists():  # lost a race to another preparer: theirs is as good
                raise
        return meta
    except OSError as exc:  # disk full, read-only: name the folder the user asked for, not the temporary one
        failure = write_failure(exc, out_dir)
        add_hint(failure, f"nothing was written at {out_dir}")
        raise failure from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _tokenize_into(files: list[Path], tmp: Path, tok: Tokenizer, val_fraction: float, source: str) -> dict:
    """Stream every file's tokens into ``train.bin``, then move the tail into ``val.bin``."""
    dtype = token_dtype(tok.vocab_size)
    total = 0
    with open(tmp / "train.bin", "wb") as out:
        for path in files:
            try:
                ids = tok.encode(path.read_bytes())
            except OSError as exc:
                raise UserError(f"--corpus: cannot read {path}: {exc.strerror}") from None
            out.write(ids.astype(dtype, copy=False).tobytes())
            total += len(ids)
    n_val = math.ceil(total * val_fraction)
    n_train = total - n_val
    need = 2 * (MIN_SEQ_LEN_AT_PREPARE + 1)
    if min(n_train, n_val) < need:
        split_at_fault = total >= 2 * need  # the corpus would do: --val-fraction leaves one split too small
        what = (f"--val-fraction {val_fraction:g}: leaves a split too small" if split_at_fault
                else f"--corpus {source}: too small")
        fix = ("give a --val-fraction that leaves both splits that many (the default is 0.05)" if split_at_fault
               else "give a larger corpus")
        raise UserError(f"{what}: {total} tokens split into train {n_train} / val {n_val}; each split needs at least "
                        f"{need} (two sequences of {MIN_SEQ_LEN_AT_PREPARE}+1): {fix}")
    all_tokens = np.memmap(tmp / "train.bin", dtype=dtype, mode="r", shape=(total,))
    np.asarray(all_tokens[n_train:]).tofile(tmp / "val.bin")
    del all_tokens
    os.truncate(tmp / "train.bin", n_train * dtype.itemsize)
    meta = {"format": FORMAT_VERSION, "tokenizer": tok.name, "vocab_size": tok.vocab_size, "dtype": dtype.name,
            "n_tokens": total, "n_train": n_train, "n_val": n_val, "val_fraction": val_fraction,
            "n_files": len(files), "source": source}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


DATA_IDENTITY = ("format", "tokenizer", "vocab_size", "dtype", "n_tokens", "n_train", "n_val", "val_fraction", "n_files")
"""The meta fields that say what a model trains on. ``source`` (the corpus as the user typed it) is left out, so
the same corpus prepared again, from another working folder, is the same data."""


def data_fingerprint(meta: dict) -> str:
    """First 12 hex digits of a hash of what a data directory holds (:data:`DATA_IDENTITY`).

    A run's row carries it beside its recipe hash: the same recipe trained on another corpus is another run, and a
    sweep or a resume must not take one for the other.
    """
    identity = {key: meta.get(key) for key in DATA_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def read_meta(data_dir: str | Path) -> dict:
    """Read and check a data directory's ``meta.json``."""
    path = Path(data_dir) / META_FILE
    if not path.exists():
        raise UserError(f"--data {data_dir}: no {META_FILE}; create one with: archscale data prepare --corpus PATH --out {data_dir}")
    try:
        meta = json.loads(path.read_text())
        int(meta["vocab_size"]), int(meta["n_train"]), int(meta["n_val"]), np.dtype(meta["dtype"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a valid data meta file ({type(exc).__name__}: {exc})") from None
    return meta


# ---- batches ----------------------------------------------------------------------
def _unreadable_split(path: Path, exc: OSError | ValueError) -> str:
    """Why a split cannot be mapped, and the remedy that fits the cause.

    Preparing the data again mends a missing or short file, not a process
    out of memory (a memory limit, or many jobs at once), which the data
    has nothing to do with.
    """
    if isinstance(exc, OSError) and is_out_of_memory(exc):
        return (f"cannot map {path.name} ({path.stat().st_size / 1e6:,.0f} MB) into memory: out of memory (the data "
                "is fine); give this process more memory (raise its memory limit, or run fewer jobs at once "
                "with --max-parallel), then run again")
    if isinstance(exc, OSError) and exc.errno != errno.ENOENT:
        return f"cannot read {path.name} ({failure_cause(exc)}); fix that and run again"
    return f"cannot read {path.name} ({exc}); prepare the data again (archscale data prepare)"


class TokenDataset:
    """One split of a prepared data directory, served as ``(seed, step)``-determined batches."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int) -> None:
        meta = read_meta(data_dir)
        self.n_tokens = int(meta["n_train" if split == "train" else "n_val"])
        self.seq_len = seq_len
        self.vocab_size = int(meta["vocab_size"])
        need = 2 * (seq_len + 1)
        if self.n_tokens < need:
            raise UserError(f"--data {data_dir}: the {split} split has {self.n_tokens} tokens, fewer than two sequences "
                            f"of seq_len {seq_len} (+1); use a bigger corpus or a smaller seq_len")
        path = Path(data_dir) / f"{split}.bin"
        try:
            self.tokens = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(self.n_tokens,))
        except (OSError, ValueError) as exc:
            raise UserError(f"--data {data_dir}: {_unreadable_split(path, exc)}") from None

    def offsets(self, seed: int, step: int, count: int) -> np.ndarray:
        """Start positions of the ``count`` sequences of optimizer step ``step``: random, reproducible."""
        rng = np.random.default_rng([seed, step])
        return rng.integers(0, self.n_tokens - self.seq_len, size=count)

    def eval_offsets(self, count: int) -> np.ndarray:
        """Evenly spaced start positions covering the split (non-overlapping when it is long enough)."""
        count = max(1, min(count, (self.n_tokens - 1) // self.seq_len))
        return np.linspace(0, self.n_tokens - self.seq_len - 1, count).astype(np.int64)

    def fetch(self, offsets: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, ``(len(offsets), seq_len)`` int64 each."""
        rows = np.stack([np.asarray(self.tokens[o : o + self.seq_len + 1]) for o in offsets]).astype(np.int64)
        batch = torch.from_numpy(rows)
        if torch.device(device).type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def unigram_entropy(self) -> float:
        """Entropy (nats/token) of this split's token frequencies: the loss of a model that ignores context."""
        counts = np.bincount(np.asarray(self.tokens), minlength=self.vocab_size).astype(np.float64)
        probs = counts[counts > 0] / counts.sum()
        return float(-(probs * np.log(probs)).sum())
