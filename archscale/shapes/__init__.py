"""Stage: shapes. What an architecture is, and which shapes exist at a parameter budget.

In: HF ``config.json`` files, presets, or a budget (N, layers, head size, GQA set). Out:
:class:`~.architecture.Architecture` (every count in one place: parameters, FLOPs, KV bytes) and candidate
tables (:mod:`.candidates`) that the search scores.
"""
