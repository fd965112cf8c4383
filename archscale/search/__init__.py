"""Stage: search. A fitted law and a serving model become the shapes worth training.

In: a fitted law (:mod:`archscale.fit`), candidate shapes (:mod:`archscale.shapes`), a device, workload and
profile (:mod:`archscale.serving`), optionally measured losses and throughputs. Out: "maximise throughput
subject to predicted loss <= target" (:mod:`.constrained`): the feasible set, the Pareto frontier, the top
picks, trainable config folders, and the figure (:mod:`.plots`).
"""
