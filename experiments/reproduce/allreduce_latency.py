"""Where the serving model's default all-reduce latency (t_allreduce = 40 us) comes from.

The tensor-parallel report in ../shared/seeds/ quotes Databricks' measured
model bandwidth utilisation (MBU: bytes a decode step must read / (step time x
tp x peak bandwidth)) for Llama-2-70B on A100s at batch 1: 55% with 4 GPUs,
38% with 8. Its own arithmetic: 71.34 GB read per step, 2 TB/s per GPU, 80
layers, two all-reduces per layer. The serving model's step at batch 1 is
``bytes / (tp x bandwidth x eta_weights) + 2 L t_allreduce`` (per-step and
per-sequence times are left out here: the quoted MBU is all there is), so

    t_allreduce = (bytes / (tp bandwidth MBU) - bytes / (tp bandwidth eta)) / (2 L)

This script solves it at TP4 (fit), predicts the TP8 utilisation from it
(held out), and shows what the report's assumed 5 us would predict.

    python experiments/reproduce/allreduce_latency.py
"""

from __future__ import annotations

from archscale.serving.estimate import CostTerms

BYTES, BANDWIDTH, LAYERS = 71.34e9, 2.0e12, 80
MEASURED = {4: 0.55, 8: 0.38}
ETA = CostTerms().eta_weights  # the uncalibrated bandwidth efficiency (0.9)


def utilisation(tp: int, t_allreduce: float) -> float:
    step = BYTES / (tp * BANDWIDTH * ETA) + 2 * LAYERS * t_allreduce
    return BYTES / (tp * BANDWIDTH) / step


def solve(tp: int, measured: float) -> float:
    return (BYTES / (tp * BANDWIDTH * measured) - BYTES / (tp * BANDWIDTH * ETA)) / (2 * LAYERS)


def main() -> None:
    fitted = solve(4, MEASURED[4])
    print(f"t_allreduce solved at TP4 (MBU {MEASURED[4]:.0%}, eta {ETA}): {fitted * 1e6:.1f} us "
          f"(solved at TP8 alone: {solve(8, MEASURED[8]) * 1e6:.1f} us)")
    print(f"{'tp':>3} {'measured':>9} {'5 us':>7} {'fitted':>7} {'default 40 us':>14}")
    for tp, measured in MEASURED.items():
        print(f"{tp:>3} {measured:>9.0%} {utilisation(tp, 5e-6):>7.1%} {utilisation(tp, fitted):>7.1%} "
              f"{utilisation(tp, CostTerms().t_allreduce):>14.1%}")
    print(f"held out: TP8 predicted {utilisation(8, fitted):.1%} from the TP4 fit, measured {MEASURED[8]:.0%}")


if __name__ == "__main__":
    main()
