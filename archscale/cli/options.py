"""Flags and parsers shared by several verbs (budgets with suffixes, integer sets, how a runs table is read)."""

from __future__ import annotations

import math

import typer

from archscale.io.errors import UserError

GPU_PRICE = typer.Option(None, "--gpu-price", metavar="<usd>", help="US dollars per GPU-hour: costs in dollars (plan "
                         "--cost dollars; search and bench --show: dollars per million output tokens). Default: the "
                         "usd_per_hour of the GPU in --gpu-file; archscale ships no prices.")
TPOT_MS = typer.Option(None, "--tpot-ms", metavar="<ms>", help="Latency limit: time per output token after the first, in ms, at "
                       "--percentile (e.g. 40, MLPerf's interactive Llama-2-70B limit); each shape is served at the most "
                       "requests up to --batch that meet it.")
TTFT_MS = typer.Option(None, "--ttft-ms", metavar="<ms>", help="Latency limit: time to first token, in ms, at --percentile (e.g. 450); "
                       "with --tpot-ms, both must hold.")
PERCENTILE = typer.Option(None, "--percentile", metavar="<statistic>", help="The statistic over requests the latency limits hold for: p50, p90, "
                          "p99 or mean (default p99).")


COUNT = "<count>"
"""How ``--help`` shows a flag taking a count with an optional suffix (``--n``, ``--tokens``): 1e9, 975M, 1.5B."""


def parse_granularity(text: str | None, label: str = "--granularity") -> list[float] | None:
    """``"1,2,4"`` or ``"4/3,2"`` to sorted positive granularities (a fraction: experts wider than d_ff / 1)."""
    if text is None:
        return None
    values: set[float] = set()
    try:
        for part in text.split(","):
            top, slash, bottom = part.strip().partition("/")
            values.add(float(top) / float(bottom) if slash else float(top))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{label} {text!r}: expected numbers or fractions such as 1,2,4 or 4/3") from None
    if not values or min(values) <= 0 or not all(math.isfinite(v) for v in values):
        raise UserError(f"{label} {text!r}: expected positive numbers")
    return sorted(values)


MAX_LISTED = 100_000
"""The most values one range of an integer list may expand to (``1-1000000000`` would fill memory first)."""


def parse_int_list(text: str | None, label: str) -> list[int] | None:
    """``"4"``, ``"1,2,4,8"`` or ``"1-16"`` to a sorted list of positive integers; None stays None."""
    if text is None:
        return None
    values: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise UserError(f"{label} {text!r}: expected integers such as 4, 1,2,4,8 or 1-16") from None
        if last < first:
            raise UserError(f"{label} {text!r}: the range {part.strip()} runs backwards; write it low to high "
                            f"({last}-{first})")
        if last - first > MAX_LISTED:
            raise UserError(f"{label} {text!r}: the range {part.strip()} lists {last - first + 1:,} values, more than "
                            f"{MAX_LISTED:,}; give the values you mean")
        values.update(range(first, last + 1))
    if not values or min(values) <= 0:
        raise UserError(f"{label} {text!r}: expected positive integers")
    return sorted(values)


def parse_assignments(items: list[str] | None, flag: str, example: str = "t_layer=0") -> dict[str, float]:
    """``--fix b0=1`` / ``--fix eta_kv=0.8`` items to ``{name: value}`` (fit and bench calibrate share it)."""
    values: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or not math.isfinite(number):
            raise UserError(f"{flag} {item!r}: expected NAME=NUMBER, e.g. {flag} {example}")
        if name.strip() in values:
            raise UserError(f"{flag} {name.strip()} is given twice ({values[name.strip()]:g}, then {number:g}); give "
                            "each name once")
        values[name.strip()] = number
    return values


def check_sweep_ranges(tolerance: float | None, r_min: float, r_max: float, x_min: float | None = None,
                       x_max: float | None = None) -> None:
    """The candidate sweep's ranges, by flag name and before any work (``candidates`` and ``search`` share the flags).

    The library checks them too, in its own names; checking here first means a bad flag is named as typed and
    costs nothing (no fit read, no output checked).
    """
    if tolerance is not None and not 0 <= tolerance < 1:
        raise UserError(f"--tolerance must be a fraction in [0, 1) of the budget N, e.g. 0.05, got {tolerance:g}")
    for low_flag, low, high_flag, high in (("--r-min", r_min, "--r-max", r_max), ("--x-min", x_min, "--x-max", x_max)):
        if low is None or high is None:
            continue
        for flag, value in ((low_flag, low), (high_flag, high)):
            if not math.isfinite(value):
                raise UserError(f"{flag} {value:g}: must be a finite number (the range's bound), e.g. {flag} 1")
        if not 0 < low <= high:
            raise UserError(f"{low_flag} {low:g} and {high_flag} {high:g}: need 0 < {low_flag} <= {high_flag}")


def typed_options(ctx: typer.Context) -> list[tuple[str, str]]:
    """``(parameter name, flag)`` of each option the user typed, in declaration order, the flag as the command
    spells it (``compile_step`` is ``--compile``): a default looks the same as a value given, and a flag the
    chosen mode does not read must be refused, not silently ignored."""
    return [(param.name, param.opts[0]) for param in ctx.command.params
            if param.name and param.param_type_name == "option"
            and getattr(ctx.get_parameter_source(param.name), "name", None) == "COMMANDLINE"]


def given_on_command_line(ctx: typer.Context, *names: str) -> list[str]:
    """The flags among ``names`` (parameter names) the user typed, as the command spells them."""
    return [flag for name, flag in typed_options(ctx) if name in names]


def gpu_help(what: str) -> str:
    """``--help`` text of a ``--gpu`` flag, listing the devices archscale knows (a --gpu-file adds more)."""
    from archscale.serving.devices import GPUS

    return f"{what}: {', '.join(GPUS)}, or a name from --gpu-file."


# ---- how a runs table is read: the same flags, with the same meaning, in `fit` and `plan` ----------------
# (``--holdout`` is not here: `fit` holds out rows, `plan` whole budgets, so each verb says what it means)
COLUMN_MAP = typer.Option(None, "--col", help='Map a file column to a canonical one, e.g. --col N="Model Size" or '
                          '--col C="Training FLOP" (C = training FLOPs, D = C/6N); the file\'s name stays usable in --where.')
WHERE = typer.Option(None, "--where", help='Use only rows matching this condition, e.g. "loss < 3.42".')
MIN_TOKENS_PER_PARAM = typer.Option(None, "--min-tokens-per-param", help="Drop runs trained on fewer tokens per "
                                    "parameter (D/N), e.g. 1 for isoFLOP wings.")
FIT_MIN_TOKENS_PER_PARAM = typer.Option(None, "--min-tokens-per-param", help="Drop runs trained on fewer tokens per "
                                        "parameter (D/N), e.g. 1 for isoFLOP wings; 0 keeps every run. Without it, the "
                                        "floor (none, 1 or 5) is chosen with the form when some runs lie below 5.")
DROP_INVALID = typer.Option(False, "--drop-invalid", help="Drop rows with a missing or invalid N, D or loss (counted) "
                            "instead of refusing the file.")


def latency_limits(tpot_ms: float | None, ttft_ms: float | None, percentile: str | None):
    """The limits ``--tpot-ms``/``--ttft-ms``/``--percentile`` give (None without a limit; the statistic defaults to
    p99); a --percentile with no limit to apply it to is refused, not ignored."""
    from archscale.serving import LatencyLimits
    from archscale.serving.estimate import parse_statistic

    statistic = parse_statistic(percentile or "p99", "--percentile")
    if tpot_ms is None and ttft_ms is None:
        if percentile is not None:
            raise UserError("--percentile picks the statistic of a latency limit: give --tpot-ms and/or --ttft-ms with it")
        return None
    return LatencyLimits(tpot_ms=tpot_ms, ttft_ms=ttft_ms, statistic=statistic)
