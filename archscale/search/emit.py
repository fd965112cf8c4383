"""Picks become trainable config folders: ``search --emit DIR`` writes ``cand-01``, ``cand-02``, ... each with
the model's ``config.json``, a ``train.json`` recipe sized for it, and ``candidate.json`` (why it was picked).

The folders are written to a staging folder first and replace an earlier search's set only when all are
complete, so an interrupted emit leaves the old set whole.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from archscale.io.errors import keep_hint
from archscale.io.files import removed_on_failure, write_failure, write_json
from archscale.io.outputs import check_emit_dir, emitted_config_dirs
from archscale.search.constrained import SearchResult, SearchSpec
from archscale.shapes.candidates import architecture_from_row
from archscale.train.config import TrainConfig, write_config_dir


def emit_configs(result: SearchResult, spec: SearchSpec, directory: str | Path) -> list[Path]:
    """Write one trainable config directory per top-k candidate (config.json, train.json, candidate.json)."""
    return emit_rows(result.top_k.to_dict("records"), spec, result.target.loss, result.target.source, directory)


def emit_rows(rows: Sequence[Mapping[str, Any]], spec: SearchSpec, target_loss: float, target_source: str,
              directory: str | Path) -> list[Path]:
    """Write ``cand-01``, ``cand-02``, ... one per row in order: the model, a recipe sized by the parameters a token
    uses (all of a dense model's, the active ones of an MoE), and the row with why it was picked.

    A failed write (a full disk) names the file under ``directory`` it was writing, not the staging folder,
    and leaves ``directory`` as it was (not even created).
    """
    directory = Path(directory)
    check_emit_dir(directory)  # only configs an earlier search emitted may be replaced; they all are (no stale cand-NN)
    with keep_hint(f"{directory} was left as it was; fix that and run the search again"), \
            removed_on_failure(directory):
        staging = Path(tempfile.mkdtemp(dir=directory, prefix=".emit-"))
        try:
            _write_staged(rows, spec, target_loss, target_source, staging, directory)
            stale, _ = emitted_config_dirs(directory)
            for old in stale:  # every new directory is complete before the old set is removed
                shutil.rmtree(old)
            written = []
            for child in sorted(staging.iterdir()):
                final = directory / child.name
                child.replace(final)
                written.append(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return written


def _write_staged(rows: Sequence[Mapping[str, Any]], spec: SearchSpec, target_loss: float, target_source: str,
                  staging: Path, directory: Path) -> None:
    """The config folders, in ``staging``; a failure names the file's place in ``directory``, where the user looks."""
    try:
        for index, row in enumerate(rows, start=1):
            name = f"cand-{index:02d}"
            arch = dataclasses.replace(architecture_from_row(row), name=name, tie_embeddings=bool(spec.tie_embeddings))
            recipe = TrainConfig.for_model_size(arch.n_params_active_non_embedding, tokens=int(spec.tokens))
            write_config_dir(staging / name, arch, recipe)
            summary = dict(row)
            summary.update(gpu=spec.gpu.name, batch_size=spec.workload.batch_size, input_len=spec.workload.input_len,
                           output_len=spec.workload.output_len, target_loss=target_loss, target_source=target_source)
            write_json(staging / name / "candidate.json", summary)
    except OSError as exc:
        staged = Path(exc.filename) if exc.filename else None
        if staged is None or staging not in staged.parents:
            raise
        raise write_failure(exc, directory / staged.relative_to(staging)) from exc

