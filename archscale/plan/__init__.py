"""Stage: plan. A fitted law or isoFLOP runs become sizes to train.

In: a runs table or a fitted law (:mod:`archscale.fit`), and for the inference-aware optimum a serving cost
(:mod:`archscale.serving`). Out: compute-optimal N*(C) and D*(C) (:mod:`.isoflop`) and the size that
minimises training plus inference cost (:mod:`.inference_optimal`).
"""
