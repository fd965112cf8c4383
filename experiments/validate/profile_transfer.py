"""Carrying a vLLM profile to another device: fitted on one device's rows, scored on the other's (held out by device).

Run:  python experiments/validate/profile_transfer.py            (prints; records each error in data/profiles/*.json)
      python experiments/validate/profile_transfer.py --no-save  (prints only)

The shipped profiles are fitted on the LLaMA-3.2 rows of the dissertation's Table 6.3, one on A100-40GB and one
on H200. Each is carried to the other device (its efficiencies on that device's datasheet peaks, its per-step and
per-sequence times kept: :meth:`archscale.serving.profiles.Profile.transferred`) and scored on every measured row
of that device in data/dissertation_throughput.csv (Tables 6.3, 6.5 and 6.6): throughput error per row and the
error of the speedups between same-size architectures, which is what search ranks by. The figures are recorded
in both profiles (``validation.transfer``, both directions); a device with no profile of its own (H100, say) then gets the
most similar measured device's profile, quoting them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from archscale.bench.calibrate import score_profile
from archscale.bench.store import load_results
from archscale.serving.devices import load_gpu
from archscale.serving.profiles import Profile, load_profile, save_profile, transferred_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILES = {"a100-40gb": ROOT / "data" / "profiles" / "vllm-a100-40gb-bf16.json",
            "h200": ROOT / "data" / "profiles" / "vllm-h200-bf16.json"}
MEASUREMENTS = ROOT / "data" / "dissertation_throughput.csv"


def carried(source: Profile, target: str) -> Profile:
    """The source profile's terms on the target device, without the transfer bookkeeping (that is what is measured)."""
    return Profile(name=f"{source.name}-on-{target}", engine=source.engine, device=load_gpu(target), dtype=source.dtype,
                   terms=source.terms, settings=source.settings, fitted=source.fitted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-save", action="store_true", help="print only; leave data/profiles as they are")
    args = parser.parse_args()
    results = load_results(MEASUREMENTS)
    profiles = {device: load_profile(path) for device, path in PROFILES.items()}
    for device, profile in profiles.items():
        own = profile.validation["heldout"]
        print(f"{profile.name} on its own device ({device}), held-out rows: mean |error| "
              f"{100 * own['mean_abs_rel_err']:.1f}%, speedups {own['speedup_mean_abs_points']:.1f} points over {own['n_pairs']} pairs")
    transfers = {}
    for device, profile in profiles.items():
        for target in profiles:
            if target == device:
                continue
            score = score_profile(carried(profile, target), results)
            transfers[f"{device}->{target}"] = score
            print(f"{profile.name} carried to {target}: every {target} row held out ({score['n_rows']} rows): mean |error| "
                  f"{100 * score['mean_abs_rel_err']:.1f}% (max {100 * score['max_abs_rel_err']:.1f}%); speedups "
                  f"{score['speedup_mean_abs_points']:.1f} points mean (max {score['speedup_max_abs_points']:.1f}) over "
                  f"{score['n_pairs']} same-size pairs")
    if not args.no_save:
        for device, profile in profiles.items():
            # both directions in each: a stand-in quotes the measured transfer errors, and is trusted to the worst
            updated = Profile(**{**vars(profile), "validation": {**profile.validation, "transfer": transfers}})
            save_profile(updated, PROFILES[device])
            print(f"recorded in {PROFILES[device].relative_to(ROOT)}")
    for device in ("h100-sxm", "a100-80gb", "l40s"):
        stand_in = transferred_profile("vllm", load_gpu(device))
        print(f"{device}: {stand_in.describe() if stand_in else 'no profile with a measured transfer'}")


if __name__ == "__main__":
    main()
