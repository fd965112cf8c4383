"""Stage: fit (its vocabulary). Law forms: what a scaling law is (:mod:`.base`), one module per family, and the registry of names.

In: nothing but parameters. Out: :data:`LAWS`, each law with its parameters, bounds, starts, ``predict`` and
``optimum``. Fitting them to runs is :mod:`archscale.fit`; a new law form is a new module here, added to
:data:`LAWS`.
"""

from __future__ import annotations

from archscale.io.errors import UserError
from archscale.laws.aspect import Aspect
from archscale.laws.base import Law, Param
from archscale.laws.chinchilla import Chinchilla
from archscale.laws.farseer import Farseer
from archscale.laws.kaplan import Kaplan
from archscale.laws.moe import MOE_LAWS, Granularity, Joint, JointFixedExponents
from archscale.laws.conditional import (
    ConditionalAdditive,
    ConditionalMultiplicative,
    ConditionalMultiplicativeGQA,
    UCurve,
    factor_optimum,
    u_factor,
)

LAWS: dict[str, Law] = {
    law.name: law
    for law in (
        Chinchilla(),
        Chinchilla(tied=True),
        Kaplan(),
        Farseer(),
        Aspect(),
        Aspect(tied=True),
        ConditionalMultiplicative(),
        ConditionalMultiplicativeGQA("log"),
        ConditionalMultiplicativeGQA("sat"),
        ConditionalAdditive(),
        UCurve("x"),
        UCurve("r"),
        Granularity(),
        Joint(),
        JointFixedExponents(),
    )
}

GQA_LAWS = ("conditional-mult-gqa", "conditional-mult-gqa-sat")
"""Conditional laws with a KV-grouping factor: selection tries them when the runs vary GQA."""
MULTIPLICATIVE = ("conditional-mult", *GQA_LAWS)
"""Laws whose prediction is a factor times ``L_opt`` (relative losses are ``L / L_opt``)."""
CONDITIONAL = (*MULTIPLICATIVE, "conditional-add")


def get_law(name: str) -> Law:
    """Look a law up by name; an unknown name is a user error listing the known ones."""
    try:
        return LAWS[name]
    except KeyError:
        raise UserError(f"unknown law {name!r}; known laws: {', '.join(LAWS)}") from None


__all__ = ["LAWS", "CONDITIONAL", "GQA_LAWS", "MOE_LAWS", "MULTIPLICATIVE", "Law", "Param", "get_law", "factor_optimum", "u_factor"]
