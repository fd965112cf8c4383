"""Stage: train. Config folders become trained runs, appended to the runs table that ``fit`` reads.

In: config folders (:mod:`.config`: the model's ``config.json`` and the recipe's ``train.json``), a
tokenised corpus (:mod:`.data`). Out: checkpoints (:mod:`.checkpoint`), a row per run in the runs table
(:mod:`archscale.fit.runs`), and HF exports (:mod:`.export`). :mod:`.loop` is a small nanoGPT-style loop for
:class:`~archscale.model.transformer.Transformer` (``python -m archscale.train`` under torchrun);
:mod:`.sweep` trains many configs through :mod:`archscale.jobs`; :mod:`.preflight` refuses a run that
cannot fit in memory before step one.

Nothing is imported eagerly, so that ``archscale --help`` does not load torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "TrainConfig": "config", "write_config_dir": "config", "train": "loop", "TrainResult": "loop",
    "sweep": "sweep", "export_hf": "export", "prepare": "data", "TokenDataset": "data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
