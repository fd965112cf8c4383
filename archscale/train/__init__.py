"""Training: a small nanoGPT-style loop for the LLaMA-style :class:`~archscale.model.Transformer`.

Modules: :mod:`.config` (``train.json`` and config directories), :mod:`.data`
(``archscale data prepare`` and deterministic batches), :mod:`.loop` (the
loop, also ``python -m archscale.train.loop`` under torchrun),
:mod:`.checkpoint`, :mod:`.sweep` and :mod:`.export` (HF safetensors).

Nothing is imported eagerly: ``python -m archscale.train.loop`` must not find
``loop`` already imported by its own package.
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
