"""Stage: fit. Runs become a fitted scaling law.

In: a runs table (:mod:`.runs`: N, D, loss, and shape columns when the law sees shape). Out: a fitted law
(:mod:`.fitted`, JSON), its scores on held-out runs (:mod:`.study`), and its form chosen by how well it
predicts larger runs (:mod:`.selection`). The law forms themselves live in :mod:`archscale.laws`; the
minimiser in :mod:`.fitting`; run hygiene (undertrained runs, outliers) in :mod:`.hygiene`.
"""
