"""Rows over seeds, the pre-registered claims and the exploratory analysis, the schedule, the three
evaluations, reproductions and pooled runs."""
import copy
import csv
import json

import pytest
import torch

import channelnorm as cn
from scipy import stats

from channelnorm.experiments.analysis import Rows, analyse, verdicts
from channelnorm.experiments.claims import BETTER, NO_DIFFERENCE, SLOWER, WORSE
from channelnorm.experiments.config import ExperimentConfig
from channelnorm.experiments.grid import Cell
from channelnorm.experiments.pipeline import reproduction
from channelnorm.experiments.report import anchors_section
from channelnorm.experiments.evaluate import evaluate_members, member_errors
from channelnorm.experiments.models import unstack, build_model
from channelnorm.experiments.results import build_rows, build_variant_rows, write_results
from channelnorm.experiments.stats import diff_ci, mean_ci
from channelnorm.experiments.train import Member, TrainPlan, schedule, train_members

CONFIG = ExperimentConfig(norms=("channel", "group", "none"), norm_batches=(2, 32), seeds=(0, 1, 2),
                          coupled_norms=("channel", "group"), coupled_batches=(2, 32))


def record(cell, seed, ema, precise=None, batch=None, loss=0.01, steps_to_target=100):
    errors = {"ema": ema, "precise": ema if precise is None else precise, "batch": ema if batch is None else batch}
    return {"run_id": cell.run_id(seed), "norm": cell.norm, "protocol": cell.protocol, "norm_batch": cell.norm_batch,
            "sgd_batch": cell.sgd_batch, "seed": seed, "errors": errors, "converged": loss < 0.05,
            "final_train_loss": loss, "diverged": False, "peak_lr": 0.1, "steps": 1000,
            "samples": 1000 * cell.sgd_batch,
            "steps_to_target": steps_to_target, "curve": [[500, 10.0], [1000, ema]]}


def found(channel_small=(3.0, 3.2, 3.4), group_coupled_small=(2.1, 2.0, 2.2), none_loss=0.01, precise_small=None):
    cells = {
        Cell("channel", "decoupled", 32, 32): [(2.0, 2.1, 2.2)],
        Cell("channel", "decoupled", 2, 32): [channel_small],
        Cell("group", "decoupled", 32, 32): [(2.0, 2.2, 2.1)],
        Cell("none", "decoupled", 32, 32): [(9.0, 9.5, 10.0)],
        Cell("channel", "coupled", 2, 2): [(4.0, 4.2, 4.4)],
        Cell("group", "coupled", 2, 2): [group_coupled_small],
        Cell("channel", "decoupled", 2, 16): [(2.5, 2.6, 2.7)],                   # the Group-Norm-faithful cell
        Cell("channel", "decoupled", 2, 32, lr_scale=0.5): [(2.9, 3.0, 3.1)],
        Cell("channel", "decoupled", 32, 32, lr_scale=0.5): [(2.4, 2.5, 2.6)],
        Cell("channel", "decoupled", 2, 32, frozen_tail=True): [(2.2, 2.3, 2.4)],
    }
    out = {}
    for cell, (values,) in cells.items():
        loss = none_loss if cell.norm == "none" else 0.01
        out[cell.cell_id] = [record(cell, s, v, precise=(precise_small[s] if precise_small and cell.norm == "channel"
                                                         and cell.norm_batch == 2 and cell.protocol == "decoupled"
                                                         else None), loss=loss) for s, v in enumerate(values)]
    return out


def test_rows_carry_the_contract_fields_and_the_interval_math():
    rows = build_rows(found(), CONFIG)
    keys = {"norm", "protocol", "norm_batch", "sgd_batch", "eval", "seeds", "errors", "mean", "ci95", "converged"}
    assert all(keys <= set(r) for r in rows)
    row = next(r for r in rows if (r["norm"], r["protocol"], r["norm_batch"], r["eval"]) == ("channel", "decoupled", 2, "ema"))
    assert row["errors"] == [3.0, 3.2, 3.4] and row["seeds"] == [0, 1, 2] and row["sgd_batch"] == 32
    m, ci = mean_ci([3.0, 3.2, 3.4])
    assert row["mean"] == pytest.approx(3.2) and row["ci95"] == pytest.approx(list(ci))
    # the coupled cell at the SGD batch is the decoupled cell's runs, reported under both protocols
    coupled32 = [r for r in rows if r["protocol"] == "coupled" and r["norm_batch"] == 32]
    assert {r["norm"] for r in coupled32} == {"channel", "group"}
    assert all(r["runs_shared_with"] == "decoupled" for r in coupled32)
    assert {(r["norm"], r["eval"]) for r in rows if r["norm"] == "none"} == {("none", e) for e in ("ema", "precise", "batch")}


def test_results_files_parse_back(tmp_path):
    rows = build_rows(found(), CONFIG)
    write_results(rows, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(rows))
    with open(tmp_path / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) and table[0]["seeds"] == "0;1;2"


def test_claims_are_the_pre_registered_families_tested_by_welch_and_holm():
    rows = build_rows(found(), CONFIG)
    a = analyse(rows, CONFIG)
    ids = [c["id"] for c in a["claims"]]
    assert ids == ["scope:group", "scope:none", "batch:2", "convergence:group", "convergence:none"]
    assert [c["id"] for c in a["preregistered"]["claims"]] == ids
    assert a["preregistered"]["alpha"] == 0.05 and "Holm" in a["preregistered"]["correction"]
    contract = {"id", "family", "a", "b", "delta", "ci95", "p", "p_holm", "verdict", "seeds"}
    assert all(contract <= set(c) for c in a["claims"])
    claims = {c["id"]: c for c in a["claims"]}
    # oracle: scipy's Welch test directly on the per-seed errors, Holm by hand within the family
    small = claims["batch:2"]
    p = stats.ttest_ind([3.0, 3.2, 3.4], [2.0, 2.1, 2.2], equal_var=False).pvalue
    assert small["delta"] == pytest.approx(3.2 - 2.1) and small["p"] == pytest.approx(p)
    assert small["p_holm"] == pytest.approx(p) and small["verdict"] == WORSE and small["seeds"] == [0, 1, 2]
    p_group = stats.ttest_ind([2.0, 2.2, 2.1], [2.0, 2.1, 2.2], equal_var=False).pvalue
    p_none = stats.ttest_ind([9.0, 9.5, 10.0], [2.0, 2.1, 2.2], equal_var=False).pvalue
    assert claims["scope:none"]["p_holm"] == pytest.approx(min(1.0, 2 * min(p_group, p_none)))
    assert claims["scope:group"]["p_holm"] == pytest.approx(max(2 * min(p_group, p_none), p_group))
    assert claims["scope:group"]["verdict"] == NO_DIFFERENCE and claims["scope:none"]["verdict"] == WORSE
    assert verdicts(a)["batch:2"] == WORSE
    better = analyse(build_rows(found(channel_small=(1.0, 1.1, 1.2)), CONFIG), CONFIG)
    assert verdicts(better)["batch:2"] == BETTER
    within_noise = analyse(build_rows(found(channel_small=(2.0, 2.3, 2.1)), CONFIG), CONFIG)
    assert verdicts(within_noise)["batch:2"] == NO_DIFFERENCE


def test_holm_can_withhold_a_claim_that_one_test_alone_would_make():
    # alpha 0.05: with p just below it, one test claims a difference; two in the family do not
    config = CONFIG.with_(alpha=0.05)
    rows = build_rows(found(), config)
    claims = {c["id"]: c for c in analyse(rows, config)["claims"]}
    p = claims["scope:none"]["p"]
    loose = {c["id"]: c for c in analyse(rows, config.with_(alpha=min(1.0, 1.5 * p)))["claims"]}
    assert loose["scope:none"]["p"] < 1.5 * p and loose["scope:none"]["p_holm"] > 1.5 * p
    assert loose["scope:none"]["verdict"] == NO_DIFFERENCE


def test_the_convergence_family_compares_areas_under_the_error_curve():
    # each record's curve is [[500, 10.0], [1000, error]]: its area is the mean of the two points
    claims = {c["id"]: c for c in analyse(build_rows(found(), CONFIG), CONFIG)["claims"]}
    none = claims["convergence:none"]
    expected = (sum((10 + e) / 2 for e in (9.0, 9.5, 10.0)) - sum((10 + e) / 2 for e in (2.0, 2.1, 2.2))) / 3
    assert none["measure"] == "curve_area" and none["delta"] == pytest.approx(expected) and none["verdict"] == SLOWER


def test_a_cell_that_did_not_converge_is_flagged_and_still_reports_its_effect():
    a = analyse(build_rows(found(none_loss=0.5), CONFIG), CONFIG)
    none = next(c for c in a["claims"] if c["id"] == "scope:none")
    assert none["gated"] is True and none["verdict"] == WORSE and none["delta"] == pytest.approx(9.5 - 2.1)
    assert any(name.startswith("none decoupled") for name in a["gated_cells"])


def test_exploratory_numbers_are_labelled_apart_from_the_claims():
    a = analyse(build_rows(found(), CONFIG), CONFIG, build_variant_rows(found(), CONFIG))
    ex = a["exploratory"]
    assert ex["coupled"]["group"]["delta"] == pytest.approx(2.1 - 2.1)
    assert ex["faithful"]["vs_reference"]["delta"] == pytest.approx(2.6 - 2.1)
    assert ex["faithful"]["vs_same_norm_batch"]["delta"] == pytest.approx(2.6 - 3.2)
    grid = {g["lr_scale"]: g for g in ex["lr_grid"]}
    assert set(grid) == {0.5, 1.0, 2.0} and grid[0.5]["penalty"]["delta"] == pytest.approx(3.0 - 2.5)
    assert grid[1.0]["penalty"]["delta"] == pytest.approx(3.2 - 2.1) and grid[2.0]["penalty"]["measured"] is False
    assert ex["frozen_tail"]["vs_without_tail"]["delta"] == pytest.approx(2.3 - 3.2)
    assert ex["frozen_tail"]["vs_reference"]["delta"] == pytest.approx(2.3 - 2.1)
    steps = {c["norm"]: c for c in ex["steps_to_target"]}
    assert steps["channel"]["reached"] == 3 and steps["channel"]["restricted_mean"] == pytest.approx(100)


def test_steps_to_target_keeps_seeds_that_never_reach_it_as_censored():
    cells = found()
    for rec in cells["decoupled-none-nb32-sgd32"][:2]:
        rec["steps_to_target"] = None
    none = next(c for c in analyse(build_rows(cells, CONFIG), CONFIG)["exploratory"]["steps_to_target"]
                if c["norm"] == "none")
    assert none["reached"] == 1 and none["seeds"] == 3
    assert none["restricted_mean"] == pytest.approx((1000 + 1000 + 100) / 3)   # censored at the run's 1000 steps


def test_precise_recovery_pairs_by_seed_not_by_position():
    # penalty 3.2 - 2.1 = 1.1 points; precise recovers mean(3.0-2.5, 3.2-2.6, 3.4-2.85) = 0.55
    rows = build_rows(found(precise_small=(2.5, 2.6, 2.85)), CONFIG)
    entry = analyse(rows, CONFIG)["exploratory"]["precise_recovery"][0]
    assert entry["penalty"]["delta"] == pytest.approx(1.1) and entry["recovered"] == pytest.approx(0.55)
    precise = next(r for r in rows if (r["norm"], r["norm_batch"], r["sgd_batch"], r["eval"])
                   == ("channel", 2, 32, "precise"))
    precise["seeds"], precise["errors"] = precise["seeds"][::-1], precise["errors"][::-1]
    assert analyse(rows, CONFIG)["exploratory"]["precise_recovery"][0]["recovered"] == pytest.approx(0.55)


def test_reproduction_is_judged_by_interval_agreement():
    here = build_rows(found(), CONFIG)
    same = reproduction(here, copy.deepcopy(here), analyse(here, CONFIG), CONFIG)
    assert all(a["agrees"] for a in same["agreement"]) and same["max_mean_change"] == 0.0
    assert same["rows_identical"] == same["rows_compared"] == len(here) and same["rows_missing"] == 0
    there = build_rows(found(channel_small=(5.0, 5.2, 5.4)), CONFIG)     # the batch-2 penalty +3.1 instead of +1.1
    moved = reproduction(here, there, analyse(here, CONFIG), CONFIG)
    agreement = {a["id"]: a for a in moved["agreement"]}
    assert agreement["batch:2"]["agrees"] is False and agreement["scope:none"]["agrees"] is True
    assert moved["max_mean_change"] == pytest.approx(2.0)
    partial = reproduction(here, there[1:], analyse(here, CONFIG), CONFIG)
    assert partial["rows_missing"] == 1 and partial["rows_compared"] == len(here) - 1


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    factors = [schedule(s, 100, 0.1) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0) and max(factors) == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5 * (1 + __import__("math").cos(__import__("math").pi * 45 / 90)))
    assert factors[-1] == pytest.approx(0.5 * (1 + __import__("math").cos(__import__("math").pi * 89 / 90)))


def test_member_errors_count_wrong_and_non_finite_predictions():
    class Fixed(torch.nn.Module):
        def forward(self, x):      # logits are the first two pixels of each member's channel block
            n = x.shape[0]
            out = x[:, :, 0, :2].reshape(n, 2, 1, 2)[:, :, 0]          # (N, members=2, classes=2)
            return out
    x = torch.zeros(4, 1, 1, 2)
    x[:, 0, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [float("nan"), 0.0]])
    y = torch.tensor([0, 0, 0, 1])
    assert member_errors(Fixed(), x, y, 2, channels_last=False, chunk=3) == [50.0, 50.0]


def test_the_three_evaluations_match_a_single_model_evaluated_by_hand():
    """Oracle: each member taken out as a narrow model; 'batch' = train mode on test batches of the
    normalization batch (ghost twin for channel norm below the SGD batch), 'precise' =
    recompute_stats on that narrow model with the same groups, 'ema' = eval mode."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    test_x, test_y = torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    plan = TrainPlan(norm="channel", norm_batch=4, sgd_batch=8, steps=6, members=(Member(0, 0.1), Member(1, 0.2)),
                     width=4, channels_last=False)
    model, _, _ = train_members(plan, x, y)
    state = copy.deepcopy(model.state_dict())
    got = evaluate_members(model, plan, test_x, test_y, x[:32])
    assert all(torch.equal(a, b) for a, b in zip(state.values(), model.state_dict().values()))   # untouched
    for k in range(2):
        narrow = unstack(model, build_model("ghost", 4, 1, virtual_batch_size=4), k, 2)
        narrow.eval()
        wrong = (narrow(test_x).argmax(1) != test_y).double().mean() * 100
        assert got["ema"][k] == pytest.approx(float(wrong), abs=1e-9)
        batch = copy.deepcopy(narrow).train()
        pred = torch.cat([batch(test_x[s:s + 4]).argmax(1) for s in range(0, 40, 4)])
        assert got["batch"][k] == pytest.approx(float((pred != test_y).double().mean() * 100), abs=1e-9)
        precise = copy.deepcopy(narrow)
        cn.recompute_stats(precise, [x[s:s + 4] for s in range(0, 32, 4)], progress=False)
        precise.eval()
        wrong = (precise(test_x).argmax(1) != test_y).double().mean() * 100
        assert got["precise"][k] == pytest.approx(float(wrong), abs=1e-9)


def _finished_run(folder, config, shift=None, capability="AVX2"):
    """A finished compare run's config.json, results.json and environment.json (every planned cell, every
    seed: test error 3.0 + seed %, plus ``shift[cell_id]`` points)."""
    from channelnorm.experiments.grid import plan
    shift = shift or {}
    # steps_to_target as the default target error (5 %) gives for the curve [[500, 10.0], [1000, ema]]
    found = {cell.cell_id: [record(cell, s, 3.0 + s + shift.get(cell.cell_id, 0.0), steps_to_target=1000)
                            for s in config.seeds]
             for cell in plan(config)}
    rows = build_rows(found, config)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "results.json").write_text(json.dumps(rows))
    (folder / "environment.json").write_text(json.dumps({"cpu_capability": capability}))
    return rows


def _drop(key):
    return lambda rows: [{k: v for k, v in r.items() if k != key} for r in rows]


# a NaN or infinity anywhere is refused by the strict JSON reader, before the rows are looked at
NONFINITE = "(NaN|Infinity) is not a JSON number"
BAD_ROWS = [
    ("not a list", lambda rows: {"a": 1}, "list"),
    ("no rows", lambda rows: [], "missing"),
    ("a row not an object", lambda rows: rows[1:] + [1], "row"),
    ("a row without mean", _drop("mean"), "mean"),
    ("a row without errors", _drop("errors"), "errors"),
    ("a row without its norm", lambda rows: [{k: v for k, v in rows[0].items() if k != "norm"}] + rows[1:], "norm"),
    ("another norm", lambda rows: [{**r, "norm": "frn"} for r in rows], "frn"),
    ("an extra cell", lambda rows: rows + [{**rows[0], "norm_batch": 999}], "999"),
    ("a duplicated row", lambda rows: rows + [rows[0]], "twice"),
    ("a NaN mean", lambda rows: [{**r, "mean": float("nan")} for r in rows], NONFINITE),
    ("a mean that is not a number", lambda rows: [{**r, "mean": "3"} for r in rows], "mean"),
    ("a mean no float holds", lambda rows: [{**r, "mean": 10**400} for r in rows], "mean"),
    ("an error no float holds", lambda rows: [{**r, "errors": [10**400] + r["errors"][1:]} for r in rows], "errors"),
    ("a seed missing", lambda rows: [{**r, "errors": r["errors"][:-1]} for r in rows], "errors"),
    ("a row without final losses", _drop("final_train_loss"), "final_train_loss"),
    ("a NaN final loss", lambda rows: [{**r, "final_train_loss": [float("nan")] * 3} for r in rows], NONFINITE),
    ("a final loss no float holds", lambda rows: [{**r, "final_train_loss": [10**400] * 3} for r in rows],
     "final_train_loss"),
    ("a divergence flag, not a count", lambda rows: [{**r, "diverged": False} for r in rows], "diverged"),
    ("a curve missing for a seed", lambda rows: [{**r, "curve": r["curve"][:-1]} for r in rows], "curve"),
    ("a curve point that is not a pair", lambda rows: [{**r, "curve": [[[1, 2, 3]]] * 3} for r in rows], "curve"),
    # Curve points as a run's record holds them: a whole step >= 0 (that a float holds) and an error in [0, 100] %.
    ("a curve step no float holds", lambda rows: [{**r, "curve": [[[10**400, 1.0]]] * 3} for r in rows], "curve"),
    ("a NaN curve step", lambda rows: [{**r, "curve": [[[float("nan"), 1.0]]] * 3} for r in rows], NONFINITE),
    ("an infinite curve step", lambda rows: [{**r, "curve": [[[float("inf"), 1.0]]] * 3} for r in rows], NONFINITE),
    ("a negative curve step", lambda rows: [{**r, "curve": [[[-500, 1.0]]] * 3} for r in rows], "curve"),
    ("a fractional curve step", lambda rows: [{**r, "curve": [[[500.5, 1.0]]] * 3} for r in rows], "curve"),
    ("a NaN curve error", lambda rows: [{**r, "curve": [[[500, float("nan")]]] * 3} for r in rows], NONFINITE),
    ("a negative curve error", lambda rows: [{**r, "curve": [[[500, -1.0]]] * 3} for r in rows], "curve"),
    ("a curve error above 100 %", lambda rows: [{**r, "curve": [[[500, 101.0]]] * 3} for r in rows], "curve"),
    ("a row without its interval", _drop("ci95"), "ci95"),
]


@pytest.mark.parametrize("name, edit, named", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_a_reproduction_whose_rows_are_not_the_grid_of_its_settings_is_refused(tmp_path, name, edit, named):
    from channelnorm.experiments.config import ConfigError
    from channelnorm.experiments.pipeline import _read_reproduction
    there = tmp_path / "there"
    rows = _finished_run(there, CONFIG)
    assert _read_reproduction(there, CONFIG)[0] == rows
    (there / "results.json").write_text(json.dumps(edit(copy.deepcopy(rows))))
    with pytest.raises(ConfigError, match=rf"(?s)--reproduction '{tmp_path}/there'.*{named}"):
        _read_reproduction(there, CONFIG)


def test_a_reproduction_is_judged_under_this_run_s_thresholds(tmp_path):
    # Its rows were built under the default thresholds (converged below a loss of 0.1, target error
    # 5 %); read by a run with stricter ones, every row is re-derived from its losses and curves.
    from channelnorm.experiments.pipeline import _read_reproduction
    there = tmp_path / "there"
    _finished_run(there, CONFIG)         # every loss 0.01; seed s has the curve [[500, 10.0], [1000, 3.0 + s]]
    rows, _ = _read_reproduction(there, CONFIG.with_(converged_loss=0.005, target_error=3.5))
    assert rows and all(r["converged"] is False for r in rows)
    assert all(r["steps_to_target"] == [1000, None, None] for r in rows)
    rows, _ = _read_reproduction(there, CONFIG.with_(converged_loss=0.02, target_error=50.0))
    assert all(r["converged"] is True and r["steps_to_target"] == [500, 500, 500] for r in rows)


@pytest.mark.parametrize("kind", ["fifo", "link", "folder", "environment list"])
def test_a_reproduction_file_that_is_not_a_plain_file_of_the_folder_is_refused_without_blocking(tmp_path, kind):
    import os
    from channelnorm.experiments.config import ConfigError
    from channelnorm.experiments.pipeline import _read_reproduction
    there = tmp_path / "there"
    _finished_run(there, CONFIG)
    if kind == "environment list":
        (there / "environment.json").write_text("[1]")
    else:
        (there / "results.json").rename(tmp_path / "elsewhere.json")
        {"fifo": lambda p: os.mkfifo(p), "link": lambda p: p.symlink_to(tmp_path / "elsewhere.json"),
         "folder": lambda p: p.mkdir()}[kind](there / "results.json")
    with pytest.raises(ConfigError, match="--reproduction"):
        _read_reproduction(there, CONFIG)


def test_verdicts_pool_independent_seeds_and_count_a_shared_seed_once(tmp_path):
    from channelnorm.experiments.across import pooled_claims, render_pooled
    # run a: seeds 0-2; run b: seeds 0-4 (0-2 shared with a: left out), its batch-2 cell 6 points worse
    first = CONFIG.with_(target_error=50.0)
    _finished_run(tmp_path / "a", first, capability="AVX512")
    _finished_run(tmp_path / "b", first.with_(seeds=(0, 1, 2, 3, 4)), shift={"decoupled-channel-nb2-sgd32": 6.0})
    result = pooled_claims([tmp_path / "a", tmp_path / "b"])
    assert result["runs"] == [f"{tmp_path / 'a'} (seeds 0–2, AVX512)", f"{tmp_path / 'b'} (seeds 0–4, AVX2)"]
    pooled = {c["id"]: c for c in result["pooled"]}
    small = pooled["batch:2"]
    assert small["n_a"] == small["n_b"] == 5 and small["seeds"] == [0, 1, 2, 3, 4]
    # oracle: a's seeds 0-2 (3 + s) and b's seeds 3, 4 (3 + s, +6 in the batch-2 cell)
    ref, cell = [3.0, 4.0, 5.0, 6.0, 7.0], [3.0, 4.0, 5.0, 12.0, 13.0]
    assert small["delta"] == pytest.approx(sum(cell) / 5 - sum(ref) / 5)
    assert small["p"] == pytest.approx(stats.ttest_ind(cell, ref, equal_var=False).pvalue)
    assert any("seed 0" in d for d in result["duplicates"]) and not any("seed 3" in d for d in result["duplicates"])
    per_run = {c["id"]: c for c in result["per_run"][1]}
    assert per_run["batch:2"]["delta"] == pytest.approx(6.0)
    assert {a["id"]: a["agrees"] for a in result["agreement"][0]}["batch:2"] is False
    text = render_pooled(result)
    assert "| batch:2 |" in text and "left out because an earlier run has the same seed" in text


def test_every_run_is_judged_under_the_first_runs_thresholds(tmp_path):
    from channelnorm.experiments.across import pooled_claims
    # every loss is 0.01: converged under the default gate, not under 0.005
    _finished_run(tmp_path / "strict", CONFIG.with_(converged_loss=0.005))
    _finished_run(tmp_path / "default", CONFIG)
    gated = {c["id"]: c["gated"] for c in pooled_claims([tmp_path / "strict", tmp_path / "default"])["pooled"]}
    assert gated["batch:2"] is True
    gated = {c["id"]: c["gated"] for c in pooled_claims([tmp_path / "default", tmp_path / "strict"])["pooled"]}
    assert gated["batch:2"] is False


def test_verdicts_refuse_runs_of_other_settings_or_unfinished_ones(tmp_path):
    from channelnorm.experiments import cli
    from channelnorm.experiments.across import pooled_claims
    from channelnorm.experiments.config import ConfigError
    _finished_run(tmp_path / "a", CONFIG)
    _finished_run(tmp_path / "longer", CONFIG.with_(epochs=16.0))
    with pytest.raises(ConfigError, match=rf"longer.*epochs: 16.0 there, {CONFIG.epochs} in the first"):
        pooled_claims([tmp_path / "a", tmp_path / "longer"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=rf"'{tmp_path}/empty' holds no finished compare run"):
        pooled_claims([tmp_path / "a", tmp_path / "empty"])
    with pytest.raises(ConfigError, match="at least two"):
        pooled_claims([tmp_path / "a"])
    with pytest.raises(SystemExit):
        cli.main(["verdicts", str(tmp_path / "a"), str(tmp_path / "empty")])


def test_verdicts_command_prints_and_writes_the_table(tmp_path, capsys):
    from channelnorm.experiments import cli
    _finished_run(tmp_path / "a", CONFIG)
    _finished_run(tmp_path / "b", CONFIG)
    assert cli.main(["verdicts", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "v.md")]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "v.md").read_text()
    assert "runs pooled" in printed and "✗" not in printed
    assert f"Command: `channelnorm verdicts {tmp_path / 'a'} {tmp_path / 'b'} --out {tmp_path / 'v.md'}`" in printed
    # a run's own output is never overwritten by the table (a file of another name in it may be written)
    before = (tmp_path / "b" / "results.json").read_bytes()
    with pytest.raises(SystemExit):
        cli.main(["verdicts", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "b" / "results.json")])
    assert (tmp_path / "b" / "results.json").read_bytes() == before
    assert cli.main(["verdicts", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "b" / "v.md")]) == 0


def test_a_fashion_mnist_report_places_accuracies_beside_the_published_ones():
    rows = build_rows(found(), CONFIG)
    fashion = CONFIG.with_(data="fashion-mnist", data_dir="/nowhere", train_size=30000, epochs=3.0)
    section = "\n".join(anchors_section(fashion, Rows(rows), parameters=12345))
    channel = [r for r in rows if (r["norm"], r["norm_batch"], r["sgd_batch"], r["eval"]) == ("channel", 32, 32, "ema")][0]
    low, high = channel["ci95"]
    # accuracy = 100 - error; the interval flips: [100 - high error, 100 - low error]
    assert f"| channel (this run) | {100 - 2.1:.2f} [{100 - high:.2f}, {100 - low:.2f}] |" in section
    assert "| none (this run) | 90.50" in section and "| ResNet-18 (published) | 94.9 |" in section
    assert "12,345 parameters" in section and "3 epochs on 30,000 of the 60,000" in section
    assert anchors_section(CONFIG, Rows(rows)) == []       # synthetic data: no published anchors
