"""Depth as a search dimension: ``archscale search --layers 8,12,16,24`` ranks shapes of several depths together.

The aspect law (fitted on the shipped aspect-ratio runs, depths 3-24 at 78M-1.7B parameters) sees depth through
R = d_model / n_layers, so its search compares depths; a conditional law, fitted at one depth, cannot, and ranks
several only with --extrapolate, each other depth labelled.
"""

import json

import pytest

from conftest import DATA

MINI_STUDY_FIT = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "cond.json"  # conditional-mult, 4 layers
# 300M non-embedding parameters at 20 tokens per parameter: inside the runs (their 237M-339M variants, 6-16 layers)
BUDGET = ["--n", "3e8", "--tokens", "6e9", "--head-dim", "64", "--gpu", "h100-sxm"]
TINY = ["--fit", str(MINI_STUDY_FIT), "--n", "2e5", "--tokens", "1.5e6", "--head-dim", "16", "--vocab", "256",
        "--d-multiple", "16", "--ff-multiple", "16", "--gqa", "1", "--batch", "8", "--input-len", "64",
        "--output-len", "16", "--slack", "0.02"]


@pytest.fixture(scope="module")
def aspect_fit(tmp_path_factory):
    """The aspect law on data/aspect_ratio_morph.csv (least squares), as ``archscale fit --law aspect`` writes it."""
    from archscale.fit.runs import load_runs
    from archscale.fit.study import run_study
    from archscale.io.files import write_json

    path = tmp_path_factory.mktemp("fit") / "aspect.json"
    write_json(path, run_study(load_runs(DATA / "aspect_ratio_morph.csv"), "aspect", "lsq").to_json())
    return path


def _search(cli, *args):
    result = cli("search", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.fixture(scope="module")
def four_depths(aspect_fit, tmp_path_factory):
    """``search --layers 8,12,16,24`` with the aspect fit, ordered by throughput alone (--tie 0), as JSON."""
    import sys
    import subprocess

    out = tmp_path_factory.mktemp("search") / "depths.json"
    command = [sys.executable, "-m", "archscale", "search", "--fit", str(aspect_fit), *BUDGET, "--layers", "8,12,16,24",
               "--top-k", "8", "--tie", "0", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_shapes_of_all_four_depths_are_scored_and_the_picks_span_depths(four_depths):
    document, _ = four_depths
    assert document["budget"]["n_layers"] == [8, 12, 16, 24]
    # the frontier (lowest loss at each throughput) draws on every depth the law prefers somewhere: it is scored per depth
    assert {f["n_layers"] for f in document["frontier"]} >= {8, 16, 24}
    depths = [pick["n_layers"] for pick in document["top_k"]]
    assert len(set(depths)) > 1, depths  # not all forced to one depth
    assert all(pick["extrapolation"] == "" for pick in document["top_k"])  # 8-24 lie inside the runs' 3-24


def test_the_printed_table_shows_each_picks_depth(four_depths):
    document, printed = four_depths
    assert "layers" in printed.split("┃ rank ┃", 1)[1].split("\n", 1)[0]
    first = document["top_k"][0]
    row = next(line for line in printed.splitlines() if line.startswith("│    1 "))
    assert [cell.strip() for cell in row.split("│")][2:4] == [str(first["n_layers"]), str(first["d_model"])]


def test_a_depth_outside_the_runs_is_an_extrapolation(cli, aspect_fit):
    args = ["--fit", aspect_fit, *BUDGET, "--layers", "16,32", "--top-k", "6", "--tie", "0"]
    inside = _search(cli, *args)
    assert {pick["n_layers"] for pick in inside["top_k"]} == {16}  # 32 is not ranked without --extrapolate
    assert any("n_layers" in note and "not ranked" in note for note in inside["notes"])
    ranked = _search(cli, *args, "--extrapolate")
    deep = [pick for pick in ranked["top_k"] if pick["n_layers"] == 32]
    assert deep and all("n_layers 32 (runs 3-24)" in pick["extrapolation"] for pick in deep)
    assert all("n_layers" not in pick["extrapolation"] for pick in ranked["top_k"] if pick["n_layers"] == 16)


def test_a_law_blind_to_depth_refuses_several_depths_in_one_line(cli):
    result = cli("search", *TINY, "--layers", "2,4")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "error: --layers 2,4: law conditional-mult cannot tell depths apart (its runs had 4 layers): it gives shapes "
        "of one x and r the same loss at every depth; add --extrapolate to rank other depths as extrapolations, or "
        "give one depth"]


def test_with_extrapolate_a_law_blind_to_depth_ranks_other_depths_labelled(cli):
    document = _search(cli, *TINY, "--layers", "2,4", "--extrapolate", "--top-k", "6", "--tie", "0")
    depths = {pick["n_layers"] for pick in document["top_k"]}
    assert depths == {2, 4}
    for pick in document["top_k"]:
        label = "n_layers 2 (law cannot see depth; runs 4)"
        assert (label in pick["extrapolation"]) == (pick["n_layers"] == 2)
    assert any("cannot tell depths apart" in note for note in document["notes"])
    assert any("same at every depth searched" in note for note in document["notes"])


def test_search_gqa_takes_the_picks_own_depth_and_reads_old_single_depth_results(four_depths):
    from archscale.search.gqa_local import full_scale_variants

    document, _ = four_depths
    pick = next(p for p in document["top_k"] if p["n_layers"] != document["budget"]["n_layers"][0])
    variants = full_scale_variants(pick, document, baseline=int(pick["gqa"]))
    assert {arch.n_layers for _, arch, _ in variants} == {pick["n_layers"]}
    old_pick = {k: v for k, v in pick.items() if k != "n_layers"}  # written before depth could vary
    old = {**document, "budget": {**document["budget"], "n_layers": 12}}
    assert {arch.n_layers for _, arch, _ in full_scale_variants(old_pick, old, baseline=int(pick["gqa"]))} == {12}


def test_every_depth_is_enumerated_and_the_law_scores_each_depth_differently(aspect_fit):
    from archscale.fit.fitted import load_fit
    from archscale.search.constrained import SearchSpec, search
    from archscale.serving.devices import load_gpu
    from archscale.serving.estimate import Workload

    spec = SearchSpec(n=3e8, tokens=6e9, n_layers=(8, 12, 16, 24), d_head=64, gpu=load_gpu("h100-sxm"),
                      workload=Workload(64, 4096, 1024), tie_tolerance=0)
    candidates = search(load_fit(aspect_fit), spec, top_k=8).candidates
    assert sorted(candidates["n_layers"].unique()) == [8, 12, 16, 24]
    # one width at two depths: R = d/layers differs, so does the predicted loss (deeper is better on these runs)
    width = candidates[candidates["d_model"] == 1024].groupby("n_layers")["predicted_loss"].min()
    assert width[8] > width[12] > width[16] > width[24]


def test_the_memory_check_counts_the_rows_of_every_depth_together(monkeypatch):
    """Each depth alone fits the memory free; all four together do not, and that is refused before any is built."""
    from archscale.io.errors import UserError
    from archscale.shapes import candidates as module

    depths = (8, 12, 16, 24)
    sizes = {depth: len(module.generate_candidates(3e8, depth, 64)) for depth in depths}
    built = []
    layouts = module._head_layouts  # the first step of building a depth's shapes
    monkeypatch.setattr(module, "_head_layouts", lambda *a: built.append(a[1]) or layouts(*a))
    # free memory: room for the largest single depth's rows (with the margin), well short of all four
    free = module.MEMORY_MARGIN * module.ROW_BYTES * max(sizes.values()) * 1.3
    assert sum(sizes.values()) > 1.3 * 1.25 * max(sizes.values())
    monkeypatch.setattr(module, "available_bytes", lambda device: free)
    for depth in depths:
        assert len(module.generate_candidates_at_depths(3e8, [depth], 64)[0]) == sizes[depth]
    built.clear()
    with pytest.raises(UserError, match="8, 12, 16, 24 layers and d_head 64: enumerating its candidates"):
        module.generate_candidates_at_depths(3e8, depths, 64)
    assert built == []
