"""A fitted law as it travels between verbs: parameters, where ``L_opt`` comes from, bootstrap draws, JSON in.

``fit`` writes it (:meth:`archscale.fit.study.Study.to_json`); ``predict``,
``plan`` and ``search`` read it back with :func:`load_fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from archscale.fit.coverage import coverage_from_json, size_range_from_json
from archscale.fit.gqa_check import GqaCheck, gqa_check_from_json
from archscale.fit.rows import empirical_best
from archscale.fit.runs import N_KINDS, require_columns
from archscale.io.errors import UserError
from archscale.io.files import read_json
from archscale.laws import CONDITIONAL, Law, get_law


# ---------------------------------------------------------------------------
@dataclass
class FittedLaw:
    """A law with parameters, and for conditional laws where ``L_opt`` comes from."""

    law: Law
    params: dict[str, float]
    reference: "FittedLaw | None" = None
    source: str = ""
    draws: list[dict[str, float]] = field(default_factory=list)  # bootstrap refits, for intervals downstream
    coverage: dict[str, list[float]] | None = None  # [low, high] per shape coordinate its runs had (fit.coverage)
    gqa: GqaCheck | None = None  # whether the search may trade on GQA, and why (fit.gqa_check)
    size_range: dict[str, list[float]] | None = None  # [low, high] of N and D over its runs: past it, plans extrapolate
    n_kind: str = "unstated"  # what its N counts (archscale.fit.runs.N_KINDS): "total" includes the embeddings

    def predict(self, frame: pd.DataFrame | Mapping[str, Any], l_opt: np.ndarray | None = None) -> np.ndarray:
        """Predicted loss for each row; conditional laws need ``L_opt`` from ``l_opt`` or the reference."""
        columns = {c: np.asarray(frame[c], float) for c in self.law.columns if c != "L_opt"}
        if "L_opt" in self.law.columns:
            columns["L_opt"] = self.reference_loss(frame) if l_opt is None else np.broadcast_to(np.asarray(l_opt, float), len(columns["x"]))
        return self.law.predict(self.params, columns)

    def reference_loss(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        if self.reference is None:
            raise UserError(f"{self.source or 'fit'}: law {self.law.name} has no reference law for L_opt(N, D); "
                            "give L_opt explicitly (--l-opt) or refit with --reference chinchilla.json")
        return self.reference.predict(frame)

    def optimum(self) -> dict[str, float]:
        return self.law.optimum(self.params)


def fitted_from_json(document: Mapping[str, Any], source: str) -> FittedLaw:
    """Rebuild a :class:`FittedLaw` from its JSON form, checking every parameter is there."""
    if not isinstance(document, Mapping) or "law" not in document or "params" not in document:
        raise UserError(f"{source}: not an archscale fit file (needs 'law' and 'params')")
    try:
        law = get_law(str(document["law"]))
    except UserError as exc:
        raise UserError(f"{source}: {exc} (written by another version of archscale, or edited?)") from None
    params = document["params"]
    missing = [name for name in law.param_names if name not in params]
    if missing:
        raise UserError(f"{source}: law {law.name} needs parameter {missing[0]!r}")
    values = {name: _parameter(params[name], name, f"{source}: parameter") for name in law.param_names}
    reference = document.get("reference")
    ref_fit = None
    if isinstance(reference, Mapping) and reference.get("kind") == "law":
        ref_fit = fitted_from_json(reference, f"{source} (reference)")
    return FittedLaw(law, values, ref_fit, source, _draws_from_json(document.get("bootstrap"), law, source),
                     coverage_from_json(document.get("coverage"), source), gqa_check_from_json(document.get("gqa"), source),
                     size_range_from_json(document.get("size_range"), source), _n_kind(document, source))


def _n_kind(document: Mapping[str, Any], source: str) -> str:
    """What the fit's N counts, from its ``N_definition`` (``unstated`` when it has none)."""
    block = document.get("N_definition")
    kind = block.get("kind", "unstated") if isinstance(block, Mapping) else "unstated"
    if kind not in N_KINDS:
        raise UserError(f"{source}: N_definition kind {kind!r} is none of {', '.join(N_KINDS)}")
    return str(kind)


def _draws_from_json(block: Any, law: Law, source: str) -> list[dict[str, float]]:
    """The bootstrap refits a fit JSON carries (``archscale fit --bootstrap K``), as parameter dicts."""
    if not block:
        return []
    try:
        names = list(block["names"])
        rows = list(block["draws"])
    except (KeyError, TypeError):
        raise UserError(f"{source}: 'bootstrap' must hold 'names' and 'draws' (rows of numbers)") from None
    if any(name not in names for name in law.param_names):
        raise UserError(f"{source}: the bootstrap refits lack a parameter of law {law.name}")
    draws = []
    for index, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != len(names):
            raise UserError(f"{source}: bootstrap refit {index + 1} must be a row of {len(names)} numbers")
        draws.append({name: _parameter(value, name, f"{source}: bootstrap refit {index + 1}, parameter")
                      for name, value in zip(names, row)})
    return draws


def _parameter(value: Any, name: str, where: str) -> float:
    """A law parameter as read from a fit JSON: a finite number, or the file is refused naming it.

    Python's JSON reader accepts NaN and Infinity; a law with one predicts "loss nan", which looks like an answer.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise UserError(f"{where} {name} must be a finite number, got {value!r}; refit with archscale fit")
    return float(value)


def load_fit(path: str | Path) -> FittedLaw:
    """Read a fit JSON written by ``archscale fit`` (or a published fit shipped in ``data/fits``)."""
    return fitted_from_json(read_json(path), str(path))


def law_inputs(law: Law, frame: pd.DataFrame, reference: FittedLaw | None, source: str) -> dict[str, np.ndarray]:
    """The columns a law reads, with ``L_opt`` computed for conditional laws."""
    needed = tuple(c for c in law.columns if c != "L_opt")
    require_columns(frame, needed, f"law {law.name}", source)
    columns = {c: frame[c].to_numpy(float) for c in needed}
    if "L_opt" in law.columns:
        columns["L_opt"] = reference.predict(frame) if reference is not None else empirical_best(frame)
    return columns


def check_reference(law: Law | str, reference: FittedLaw) -> None:
    """A reference law supplies ``L_opt(N, D)``: only conditional laws use one, and it must be a Chinchilla fit.

    With ``law`` ``"auto"`` the reference brings the conditional laws into the candidate forms.
    """
    name = law if isinstance(law, str) else law.name
    if name != "auto" and name not in CONDITIONAL:
        raise UserError(f"--reference only applies to the conditional laws ({', '.join(CONDITIONAL)}), not {name}")
    if reference.law.name not in ("chinchilla", "chinchilla-tied"):
        raise UserError(f"--reference {reference.source}: must be a chinchilla fit, got law {reference.law.name}")
