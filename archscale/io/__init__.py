"""Stage: none (the floor every stage stands on). Talking to the outside world the same way everywhere.

The one error type (:mod:`.errors`: a ``UserError`` is one line and exit code 2), the output policy
(:mod:`.outputs`: every output checked before any work), atomic files (:mod:`.files`), counts with suffixes
and dtype names (:mod:`.units`), the machine's free memory (:mod:`.machine`) and the one figure style (:mod:`.figures`).

In: paths, messages and counts from every stage. Out: outputs checked before any work, one-line errors,
files written whole or not at all, figures in one style. It imports nothing else of archscale.
"""
