"""``report.md``: renders the rows, the analysis (``analysis.py``) and the mechanism measurement.

Rendering only: every number and verdict comes from ``analysis.analyse``; this module decides how
they read, one function per section. Errors are test errors in percent; intervals are 95 %
Student-t (one cell) or Welch (a difference) intervals over seeds.
"""
from __future__ import annotations

from typing import Any, Optional

from .analysis import Rows
from .claims import BETTER, FASTER, NO_DIFFERENCE, SLOWER, WORSE
from .config import ExperimentConfig
from .tuned_lrs import is_tuned

# Group Norm paper (Wu & He 2018), ResNet-50 on ImageNet, top-1 error % at *per-GPU* batch 32..2: BN
# statistics are computed per GPU on 8 GPUs, so "batch 2" is normalization batch 2 inside SGD batch 16
PAPER = {"channel (BN)": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
         "group (GN)": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}
PAPER_AT_32 = {"layer (LN)": 25.3, "instance (IN)": 28.4}
EVALNORM_POINTS = 6.18   # EvalNorm (Singh & Shrivastava 2019): fixing evaluation statistics only, batch 2

# Published accuracies (%) on the Fashion-MNIST test set, from the data set's own benchmark table
FASHION_MNIST_ANCHORS = (("small CNNs with batch norm", "92–93.4"), ("ResNet-18", "94.9"), ("WRN-28-10", "95.9"))

FAMILY_TITLES = {"scope": "Why per channel? Every other scope against channel norm",
                 "batch": "Is channel norm robust to the normalization batch?",
                 "convergence": "Does channel norm converge faster? (area under the error curve)"}


def _ci(ci: Optional[list]) -> str:
    return "—" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _p(p: Optional[float]) -> str:
    return "—" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def _cell(row: Optional[dict[str, Any]]) -> str:
    if row is None:
        return "—"
    return f"{row['mean']:.2f} {_ci(row['ci95'])}" + ("" if row["converged"] else " ⚠")


def _table(header: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in body])


def _effect(c: Optional[dict[str, Any]]) -> str:
    if c is None or c.get("delta") is None:
        return "not measured"
    return (f"{c['delta']:+.2f} {_ci(c['ci95'])}, p = {_p(c['p'])} (unadjusted)"
            + (" ⚠ gated" if c.get("gated") else ""))


def _name(cell: list) -> str:
    norm, protocol, nb, sb = cell
    if norm == "channel" and nb != sb:
        return f"channel, normalization batch {nb} in SGD batch {sb}"
    return f"{norm} at batch {sb}"


def header(config: ExperimentConfig, environment: dict[str, Any], dataset: str) -> list[str]:
    lines = ["# channelnorm compare — report", "",
             f"Data: {dataset}. Grid: {config.grid}. Command: `{environment.get('command', '')}`.", "",
             f"Machine: {environment.get('cpu_model')} ({environment.get('cpu_count')} logical CPUs), CPU code path "
             f"{environment.get('cpu_capability')}, torch {environment.get('torch')}, python "
             f"{environment.get('python')}, report written at git {environment.get('git')}; every cell computed "
             f"with 1 torch thread, {config.workers} worker process(es)."]
    for s in environment.get("sweeps", []):
        lines.append(f"- sweep {s['started']} → {s['finished']}: {s['wall_seconds']} s wall, {s['executed']} cells "
                     f"trained, {s['skipped']} reused; load average at start {s['load_start']}, at end "
                     f"{s['load_end']}; git {s['git']}.")
    return lines + [""]


def claims_section(analysis: dict[str, Any]) -> list[str]:
    """The answers: every pre-registered claim, its effect, interval, p-values and verdict."""
    pre = analysis["preregistered"]
    lines = ["## The pre-registered claims", "",
             f"Fixed before the run (`analysis.json[\"preregistered\"]`): {pre['test']}; {pre['correction']}, "
             f"alpha {pre['alpha']}. Reference *a* is channel norm at the SGD batch; Δ = b − a in points "
             "(positive: *b* has the higher error, i.e. is worse or slower). ⚠ gated: a seed of one of the two "
             f"cells ended with a training loss not below {pre['gate']['converged_loss']} (reported anyway).", ""]
    for family in ("scope", "batch", "convergence"):
        claims = [c for c in analysis["claims"] if c["family"] == family]
        if not claims:
            continue
        lines += [f"### {FAMILY_TITLES[family]}", ""]
        body = [[_name(c["b"]), "—" if c["delta"] is None else f"{c['delta']:+.2f}", _ci(c["ci95"]), _p(c["p"]),
                 _p(c["p_holm"]), f"**{c['verdict']}**" + (" ⚠ gated" if c["gated"] else ""),
                 f"{c['n_a']}/{c['n_b']}"] for c in claims]
        lines += [_table(["b (vs channel at the SGD batch)", "Δ points", "95 % CI", "p", "p (Holm)", "verdict",
                          "seeds a/b"], body), ""]
        lines += [reading(c) for c in claims] + [""]
    return lines


def reading(c: dict[str, Any]) -> str:
    """One sentence per claim that says only what its test supports."""
    who = _name(c["b"])
    what = "mean error over the training curve" if c["measure"] == "curve_area" else "test error"
    if c["delta"] is None:
        return f"- {who}: not measured."
    effect = f"{c['delta']:+.2f} points {_ci(c['ci95'])}"
    text = {WORSE: f"higher {what} than channel norm, {effect}",
            BETTER: f"lower {what} than channel norm, {effect}",
            SLOWER: f"converges more slowly than channel norm ({what} {effect})",
            FASTER: f"converges faster than channel norm ({what} {effect})",
            NO_DIFFERENCE: f"no difference detected after Holm ({effect}); differences outside the interval are "
                           "unlikely, smaller ones are not ruled out"}.get(c["verdict"], c["verdict"])
    return f"- {who}: {text}" + (" — ⚠ gated: not every seed converged." if c["gated"] else ".")


def reproduction_section(reproduction: Optional[dict[str, Any]], environment: dict[str, Any]) -> list[str]:
    lines = ["## Reproduction on a second CPU code path", ""]
    if reproduction is None:
        return lines + ["No rerun on a second CPU code path is attached to this run.", ""]
    agree = [a for a in reproduction["agreement"] if a["agrees"] is not None]
    held = sum(a["agrees"] for a in agree)
    lines += [f"Rerun on {describe_code_path(reproduction['environment'])} (this run: "
              f"{describe_code_path(environment)}), `{reproduction['path']}`. A claim reproduces when each run's "
              f"effect lies inside the other's 95 % interval: **{held} of {len(agree)}** do.", "",
              _table(["claim", "this run", "rerun", "reproduces"],
                     [[a["id"], "—" if a["here"] is None else f"{a['here']:+.2f} {_ci(a.get('here_ci95'))}",
                       "—" if a["there"] is None else f"{a['there']:+.2f} {_ci(a.get('there_ci95'))}",
                       "—" if a["agrees"] is None else ("✓" if a["agrees"] else "✗")]
                      for a in reproduction["agreement"]]), "",
              f"Rows compared: {reproduction['rows_compared']} ({reproduction['rows_missing']} missing there); "
              f"identical seed by seed: {reproduction['rows_identical']}; largest change of a cell mean: "
              f"{reproduction['max_mean_change']:.2f} points. Switching the CPU code path changes the rounding, "
              "which over thousands of steps acts like another seed.", ""]
    return lines


def describe_code_path(environment: dict[str, Any]) -> str:
    """The CPU code path a run took: torch's capability, with the environment overrides that chose it."""
    forced = [f"{name}={environment[key]}" for name, key in (("ATEN_CPU_CAPABILITY", "aten_cpu_capability_env"),
                                                             ("ONEDNN_MAX_CPU_ISA", "onednn_max_cpu_isa_env"))
              if environment.get(key)]
    return str(environment.get("cpu_capability")) + (f" ({', '.join(forced)})" if forced else "")


def protocol_section(config: ExperimentConfig, rows: Rows) -> list[str]:
    lrs = sorted({(r["norm"], r["peak_lr"]) for r in rows.rows if r["protocol"] == "decoupled"
                  and r["sgd_batch"] == config.sgd_batch})
    untuned = sorted({n for n, _ in lrs if not is_tuned(n, config)})
    faithful = ("" if config.faithful_cell is None else
                f" The **Group-Norm-faithful cell**: channel norm at normalization batch {config.faithful_cell[0]} "
                f"inside SGD batch {config.faithful_cell[1]}, learning rate scaled linearly "
                f"(×{config.faithful_cell[1]}/{config.sgd_batch}), the same samples.")
    return [
        "## Protocol (v3, as run)", "",
        f"- Every cell trains {config.samples()} samples ({config.epochs:g} epochs of {config.train_size} images) "
        f"with linear warm-up over {config.warmup_fraction:.0%} of the steps then cosine decay to 0, SGD momentum "
        f"{config.momentum}, weight decay {config.weight_decay}; each seed has its own initialization and data order.",
        f"- **Decoupled**: SGD batch {config.sgd_batch} ({config.steps(config.sgd_batch)} steps); channel norm's "
        f"normalization batch {', '.join(map(str, sorted(config.norm_batches, reverse=True)))} through ghost "
        "batches; batch-independent norms train once." + faithful,
        "- **Learning rate** per norm (peak, at batch "
        f"{config.sgd_batch}): " + ", ".join(f"{n} {lr:g}" for n, lr in lrs) + " — from the committed tuning sweep "
        "on a validation split held out of the training set" + (f"; **untuned** (fallback): {', '.join(untuned)}"
                                                                if untuned else "") + ".",
        f"- **Seeds** {list(config.seeds)}, trained side by side as one wide grouped network (tested equal to "
        f"separate runs). Group norm: the largest divisor of the channel count up to {config.max_groups} groups.",
        f"- **Evaluation** on {config.test_size} test images: running (EMA) statistics (the claims); precise "
        f"population statistics (`recompute_stats` over {config.precise_size} training images); statistics of each "
        f"test batch of the normalization batch. Error curves: {config.curve_points} points on {config.curve_size} "
        "test images, read with per-batch statistics (not the running estimates, which lag at high learning rates).",
        "",
    ]


def batch_section(config: ExperimentConfig, rows: Rows, analysis: dict[str, Any]) -> list[str]:
    sb, ex = config.sgd_batch, analysis["exploratory"]
    batches = rows.norm_batches("channel", sgd_batch=sb)
    lines = ["## Exploratory: the normalization batch in detail", "",
             "Not pre-registered: leads, with unadjusted p-values.", "",
             "Test error (%), mean [95 % CI] over seeds; ⚠ = not every seed converged.", ""]
    body = [[f"channel, {name}"] + [_cell(rows.get("channel", "decoupled", nb, sb, e)) for nb in batches]
            for e, name in (("ema", "running (EMA)"), ("precise", "precise population"), ("batch", "per-batch"))]
    lines += [_table(["evaluation"] + [f"norm batch {nb}" for nb in batches], body), ""]
    for p in ex["precise_recovery"]:
        lines.append(f"- Normalization batch {p['norm_batch']}: penalty (EMA) {_effect(p['penalty'])}; precise "
                     f"statistics recover {p['recovered']:+.2f} points {_ci(p['recovered_ci95'])} (paired by seed, "
                     f"{p['pairs']} pairs). Precise statistics remove only the error of the running estimate.")
    tail = ex["frozen_tail"]
    if tail is not None:
        lines += ["", f"**Frozen tail** (Wu & Johnson's FrozenBN): normalization batch {tail['norm_batch']}, the last "
                  f"{tail['share_of_steps']:.1%} of the steps trained with population statistics held fixed, so "
                  "training and test use the same statistics at the end. Against the same cell without the tail: "
                  f"{_effect(tail['vs_without_tail'])}; against channel norm at batch {sb}: "
                  f"{_effect(tail['vs_reference'])}. A penalty that the tail removes is train/test inconsistency; "
                  "one that stays was paid during training (noisy statistics)."]
    if ex["lr_grid"]:
        lines += ["", "**Learning-rate grid** (factor on the tuned rate): the penalty of the smallest normalization "
                  "batch at each rate.", ""]
        lines += [_table(["LR factor", "peak LR", f"batch {sb}", "smallest batch", "penalty"],
                         [[f"×{g['lr_scale']:g}", "—" if g["peak_lr"] is None else f"{g['peak_lr']:g}",
                           "—" if g["at_sgd_batch"] is None else f"{g['at_sgd_batch']['mean']:.2f}",
                           "—" if g["at_small_batch"] is None else f"{g['at_small_batch']['mean']:.2f}",
                           _effect(g["penalty"])] for g in ex["lr_grid"]])]
    f = ex["faithful"]
    if f is not None:
        lines += ["", f"**Group-Norm-faithful cell** (normalization batch {f['norm_batch']} inside SGD batch "
                  f"{f['sgd_batch']}: {f['sgd_batch'] // f['norm_batch']} \"GPUs\" of {f['norm_batch']} images, as the paper's "
                  f"per-GPU batch 2 on 8 GPUs): against channel norm at batch {sb}: "
                  f"{_effect(f['vs_reference'])}" + ("" if f["vs_same_norm_batch"] is None else
                                                   f"; against normalization batch {f['norm_batch']} inside SGD batch "
                                                   f"{sb}: {_effect(f['vs_same_norm_batch'])}") + ".",
                  "", "For scale, the Group Norm paper (ResNet-50, ImageNet, BN statistics per GPU, 8 GPUs, learning "
                  "rate 0.1·N/32 for per-GPU batch N): BN " + " / ".join(f"{PAPER['channel (BN)'][b]}" for b in
                                                                        (32, 16, 8, 4, 2))
                  + " % at per-GPU batch 32/16/8/4/2; GN " + " / ".join(f"{PAPER['group (GN)'][b]}" for b in
                                                                       (32, 16, 8, 4, 2)) + " %. EvalNorm (Singh & "
                  f"Shrivastava 2019) recovers {EVALNORM_POINTS} of BN's points at batch 2 by fixing only the "
                  "evaluation statistics."]
    return lines + [""]


def convergence_section(config: ExperimentConfig, analysis: dict[str, Any]) -> list[str]:
    ex = analysis["exploratory"]
    lines = ["## Exploratory: steps to a target error", "",
             f"Steps until the per-batch test error first reached {config.target_error:g} %, each norm at its tuned "
             "learning rate; a seed that never reached it is censored at the run's length (counted, not dropped).", ""]
    lines += [_table(["norm", "LR", "steps per seed (— never)", "reached", "restricted mean [95 % CI]"],
                     [[c["norm"], f"{c['peak_lr']:g}", ", ".join("—" if s is None else str(s)
                                                                  for s in c["steps_to_target"]),
                       f"{c['reached']}/{c['seeds']}", f"{c['restricted_mean']:.0f} {_ci(c['ci95'])}"]
                      for c in ex["steps_to_target"]]), ""]
    for s in ex["shared_lr"]:
        lines.append(f"- **Shared learning rate** {s['peak_lr']:g}: {s['norm']} minus channel: test error "
                     f"{_effect(s['test_error'])}; mean error over the curve {_effect(s['curve_area'])}.")
    return lines + ["", "Plot: `curves.png`.", ""]


def scope_section(config: ExperimentConfig, analysis: dict[str, Any], mechanism: dict[str, Any]) -> list[str]:
    lines = ["## Exploratory: scopes ranked, and what each removes", "",
             _table(["norm", "test error % [95 % CI]", "peak LR"],
                    [[r["norm"], f"{r['mean']:.2f} {_ci(r['ci95'])}" + ("" if r["converged"] else " ⚠"),
                      f"{r['peak_lr']:g}"] for r in analysis["exploratory"]["scope_ranking"]]), "",
             "Group Norm paper at per-GPU batch 32: BN 23.6, GN 24.1, "
             + ", ".join(f"{k} {v}" for k, v in PAPER_AT_32.items()) + " (ImageNet top-1 error %).", "",
             "**Mechanism** (measured, `mechanism.py`): relative RMS change of the normalized first-layer features "
             "when one thing changes (0 = the norm removes it).", ""]
    per = mechanism["per_norm"]
    keys = (("contrast", "per-image contrast ×[0.5, 1]"), ("colour", "per-image shift per input channel"),
            ("filter_scale_same_channel", "one filter ×3: that channel"),
            ("filter_scale_other_channels", "one filter ×3: other channels"))
    lines += [_table(["norm"] + [k[1] for k in keys], [[n] + [f"{per[n][k]:.3f}" for k, _ in keys] for n in per]), "",
              f"Between-image variance of per-channel feature means: "
              f"{100 * mechanism['between_image_mean_share']:.1f} % of the first-layer feature variance — removed by "
              "per-sample, per-channel statistics (instance), kept by per-channel batch statistics (channel).", "",
              "- *True by definition*: channel norm computes each channel's statistics from that channel alone, so "
              "scaling one filter changes no other channel; group and layer norm share statistics across channels "
              "(the filter columns above measure it). Per-position layer norm (layernorm2d) normalizes each pixel "
              "over the channels: it removes per-pixel intensity, not per-channel scale.",
              "- *Measured*: whether keeping per-image differences (channel) or removing them (instance) helps is "
              "what the scope claims above test on this data.", ""]
    return lines


def data_section(config: ExperimentConfig, dataset: str) -> list[str]:
    if getattr(config, "data", "synthetic") == "synthetic" and config.data_dir is None:
        body = [f"- Synthetic shapes, {config.image_size}×{config.image_size}, colour variation "
                f"{config.colour_variation}, contrast variation {config.contrast_variation} (`synthetic.py`): chosen "
                "midway between no per-image nuisance and fully random colours. Colours and contrast carry no class "
                "information.",
                "- Biases: procedurally drawn shapes, one object per image, Gaussian pixel noise, no natural texture "
                "statistics; per-image nuisance favours per-sample scopes; the network is small, so even at "
                f"normalization batch 2 each first-stage channel's statistics pool 2×{config.image_size}×"
                f"{config.image_size} positions (ResNet-50 at 224 px pools 2×112×112 in its first layer but 2×7×7 in "
                "its last stage), which makes small batches gentler here than deep in a large network."]
    else:
        body = [f"- {dataset}. Real images, standardized with the training set's statistics; no augmentation.",
                "- Differences from published setups: a small residual CNN (3 stages, width "
                f"{config.width}), {config.epochs:g} epochs on {config.train_size} training images, no augmentation."]
    return ["## Data and its biases", ""] + body + [""]


def anchors_section(config: ExperimentConfig, rows: Rows, parameters: Optional[int] = None) -> list[str]:
    """Fashion-MNIST only: each norm's test accuracy (100 − mean error, EMA statistics, trained at
    the SGD batch) beside the published accuracies, and what differs from those setups."""
    if getattr(config, "data", "synthetic") != "fashion-mnist":
        return []
    body = []
    for norm in rows.decoupled_norms():
        row = rows.get(norm, "decoupled", config.sgd_batch, config.sgd_batch)
        if row is not None:
            low, high = (None, None) if row["ci95"] is None else (100 - row["ci95"][1], 100 - row["ci95"][0])
            body.append([f"{norm} (this run)", f"{100 - row['mean']:.2f}" + ("" if low is None else
                                                                              f" [{low:.2f}, {high:.2f}]")])
    body += [[f"{name} (published)", accuracy] for name, accuracy in FASHION_MNIST_ANCHORS]
    size = "" if parameters is None else f" of {parameters:,} parameters"
    train = "all" if config.train_size is None else f"{config.train_size:,}"
    return (["## Beside the published accuracies", "",
             _table(["model", "test accuracy % [95 % interval over seeds]"], body), "",
             f"- What differs: this network is a 3-stage residual CNN{size} (width {config.width}, the stem halves "
             f"the 28×28 images), trained {config.epochs:g} epochs on {train} of the 60,000 training images, no "
             "augmentation, SGD batch 32 on one CPU core; the published models are larger and train longer, most "
             "with augmentation. The comparison places the scale of the errors; it is not a like-for-like result.",
             ""])


def gated_section(analysis: dict[str, Any]) -> list[str]:
    if not analysis["gated_cells"]:
        return []
    return (["## Cells where a seed did not pass the convergence gate (reported, flagged ⚠)", ""]
            + [f"- {name}" for name in analysis["gated_cells"]] + [""])


def coupled_section(rows: Rows, analysis: dict[str, Any]) -> list[str]:
    coupled = analysis["exploratory"]["coupled"]
    if not coupled:
        return []
    lines = ["## Exploratory: coupled cells (SGD batch = normalization batch)", "",
             "Small-SGD-batch training: more, noisier steps at a linearly scaled learning rate. This is *not* the "
             "Group Norm paper's protocol (its small batches are per GPU inside SGD batch 16 or more; see the "
             "Group-Norm-faithful cell).", ""]
    batches = sorted({r["norm_batch"] for r in rows.rows if r["protocol"] == "coupled"}, reverse=True)
    body = [[norm] + [_cell(rows.get(norm, "coupled", b, b)) for b in batches] for norm in coupled]
    lines += [_table(["norm (EMA)"] + [f"batch {b}" for b in batches], body), ""]
    lines += [f"- {norm}: smallest minus largest batch: {_effect(c)}" for norm, c in coupled.items()]
    return lines + [""]


def render(rows_list: list[dict[str, Any]], analysis: dict[str, Any], mechanism: dict[str, Any],
           config: ExperimentConfig, environment: dict[str, Any], dataset: str,
           reproduction: Optional[dict[str, Any]] = None, variant_rows: Optional[list[dict[str, Any]]] = None,
           parameters: Optional[int] = None) -> str:
    rows = Rows(rows_list, variant_rows or ())
    sections = [header(config, environment, dataset), claims_section(analysis),
                reproduction_section(reproduction, environment), protocol_section(config, rows),
                batch_section(config, rows, analysis), convergence_section(config, analysis),
                scope_section(config, analysis, mechanism), coupled_section(rows, analysis),
                anchors_section(config, rows, parameters), data_section(config, dataset), gated_section(analysis),
                ["Plots: `error_vs_batch.png` (test error by normalization batch), `curves.png` (error vs steps).", ""]]
    return "\n".join(line for section in sections for line in section)
