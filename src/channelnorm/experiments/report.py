"""``report.md``: the tables, the plot and a reading written from the measured numbers.

Every sentence of the reading is computed here from ``results.json``-style rows; nothing about
which norm wins is written in advance. A difference counts as real only when it exceeds twice the
seed-to-seed noise (the std of the difference of two means) and one percentage point.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from .config import BATCH_STATISTIC_NORMS, ExperimentConfig

# Group Norm paper (Wu & He 2018), ResNet-50 on ImageNet, top-1 error % at batch/GPU 32..2
PAPER = {"channel": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
         "group": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}
PAPER_AT_32 = {"layer": 25.3, "instance": 28.4}


def _pct(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


UNSETTLED = "not settled: one seed, noise unmeasured"


def _diff_noise(a: dict, b: dict, key: str) -> float:
    """Std of (mean_a − mean_b) from the seed spread; 0 when a std is unknown (one seed)."""
    total = 0.0
    for row in (a, b):
        std, n = row[f"{key}_std"], row["runs"] - row["diverged"]
        if std is not None and n > 0:
            total += std * std / n
    return math.sqrt(total)


def _change(a: dict, b: dict, key: str) -> tuple[Optional[float], str]:
    """(b − a) in points and a word for it: 'worse', 'better' or 'unchanged (within noise)'."""
    if a[f"{key}_mean"] is None or b[f"{key}_mean"] is None:
        return None, "not measured (all runs diverged)"
    delta = b[f"{key}_mean"] - a[f"{key}_mean"]
    if a[f"{key}_std"] is None or b[f"{key}_std"] is None:
        return delta, UNSETTLED      # fewer than two seeds: the noise a difference must beat is unknown
    threshold = max(0.01, 2 * _diff_noise(a, b, key))
    if delta > threshold:
        return delta, "worse"
    if delta < -threshold:
        return delta, "better"
    return delta, "unchanged within seed noise"


def _beyond_noise(a: dict, b: dict, key: str, minimum: float) -> int:
    """+1 when b's mean exceeds a's, -1 when it is below, by more than ``minimum`` and twice the seed
    noise of the difference; 0 otherwise (or when either mean is missing)."""
    if a is None or b is None or a[f"{key}_mean"] is None or b[f"{key}_mean"] is None:
        return 0
    delta = b[f"{key}_mean"] - a[f"{key}_mean"]
    threshold = max(minimum, 2 * _diff_noise(a, b, key))
    return 1 if delta > threshold else -1 if delta < -threshold else 0


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


class _Rows:
    def __init__(self, rows: list[dict[str, Any]], config: ExperimentConfig) -> None:
        self.by_key = {(r["norm"], r["batch_size"]): r for r in rows}
        self.norms = [n for n in config.norms if any((n, b) in self.by_key for b in config.batch_sizes)]
        self.sizes = sorted({b for (_, b) in self.by_key}, reverse=True)
        self.large, self.small = (self.sizes[0], self.sizes[-1]) if self.sizes else (None, None)

    def get(self, norm: str, bs: int) -> Optional[dict[str, Any]]:
        return self.by_key.get((norm, bs))


def _error_table(r: _Rows, key: str) -> str:
    header = ["norm"] + [f"batch {b}" for b in r.sizes] + [f"change {r.large}→{r.small}"]
    body = []
    for norm in r.norms:
        cells = [norm]
        for bs in r.sizes:
            row = r.get(norm, bs)
            cell = _pct(row[f"{key}_mean"], row[f"{key}_std"]) if row else "—"
            if row and row["diverged"]:
                cell += f" ({row['diverged']}/{row['runs']} diverged)"
            cells.append(cell)
        a, b = r.get(norm, r.large), r.get(norm, r.small)
        delta, word = _change(a, b, key) if a and b and r.large != r.small else (None, "")
        cells.append("—" if delta is None else f"{100 * delta:+.1f} ({word})")
        body.append(cells)
    return _table(header, body)


def _batch_size_reading(r: _Rows) -> list[str]:
    if r.large == r.small:
        return ["Only one batch size was run, so the change with batch size is not measured."]
    changes = []
    for norm in r.norms:
        a, b = r.get(norm, r.large), r.get(norm, r.small)
        if a and b:
            delta, word = _change(a, b, "eval_error")
            if delta is not None:
                changes.append((delta, norm, word))
    if not changes:
        return ["No norm has finished runs at both ends of the batch range."]
    changes.sort(reverse=True)
    lines = [f"- From batch {r.large} to batch {r.small}: "
             + "; ".join(f"**{n}** {100 * d:+.1f} points ({w})" for d, n, w in changes) + "."]
    worst, best = changes[0], changes[-1]
    lines.append(f"- Largest rise in error: **{worst[1]}** ({100 * worst[0]:+.1f} points); largest fall: "
                 f"**{best[1]}** ({100 * best[0]:+.1f} points).")
    channel = next((c for c in changes if c[1] == "channel"), None)
    if channel is not None:
        if channel[2] == "worse":
            lines.append(f"- **This contradicts the seed's claim that channel normalization is robust to batch "
                         f"size**: its error rises by {100 * channel[0]:.1f} points from batch {r.large} to "
                         f"{r.small}, the direction the Group Norm paper reports for BN (23.6 → 34.7 % on ImageNet).")
        elif channel[2] == "better":
            lines.append(f"- Channel normalization got *better* at batch {r.small} ({100 * channel[0]:+.1f} points); "
                         "here that is not robustness to noisy statistics alone: with the samples fixed, batch "
                         f"{r.small} takes {r.large // r.small}× more optimizer steps than batch {r.large}.")
        elif channel[2] == UNSETTLED:
            lines.append(f"- Channel normalization's change ({100 * channel[0]:+.1f} points) rests on a single "
                         "seed at one end, so its seed noise is unmeasured and this run neither confirms nor "
                         "contradicts the robustness claim; run two or more seeds.")
        else:
            lines.append(f"- Channel normalization's change ({100 * channel[0]:+.1f} points) is within seed noise "
                         f"at this scale, so this run neither shows the Group Norm paper's BN degradation nor "
                         f"contradicts the robustness claim.")
    control = _control(r)
    relative = [(norm, delta - control[0]) for delta, norm, _ in changes
                if control is not None and norm in BATCH_STATISTIC_NORMS]
    if relative:
        lines.append(f"- Control for the schedule change: the batch-independent norm that trains best at batch "
                     f"{r.large}, **{control[1]}** ({100 * control[0]:+.1f} points). Relative to it, from batch "
                     f"{r.large} to {r.small}: " + "; ".join(f"**{n}** {100 * d:+.1f}" for n, d in relative)
                     + " points — an estimate of the part of each change due to batch statistics (difference of "
                     "differences, assuming the schedule acts alike on both).")
    independent = [c for c in changes if c[1] not in BATCH_STATISTIC_NORMS and c[1] != "none"]
    if independent:
        moved = [c for c in independent if c[2] in ("worse", "better")]
        lines.append("- Batch-independent norms (" + ", ".join(c[1] for c in independent) + ") compute the same "
                     "function of each sample at any batch size; "
                     + (f"their error still moved ({', '.join(f'{c[1]} {100 * c[0]:+.1f}' for c in moved)} points) "
                        "because the batch size also changes the number of steps and the gradient noise."
                        if moved else "their error did not move beyond seed noise, as expected."
                        if all(c[2] != UNSETTLED for c in independent)
                        else "whether their error moved is not settled (one seed: noise unmeasured)."))
    return lines


def _scope_reading(r: _Rows) -> list[str]:
    lines = []
    for bs in dict.fromkeys((r.large, r.small)):
        ranked = sorted(((r.get(n, bs)["eval_error_mean"], n) for n in r.norms
                         if r.get(n, bs) and r.get(n, bs)["eval_error_mean"] is not None))
        if not ranked:
            continue
        order = " < ".join(f"{n} {_pct(e)}" for e, n in ranked)
        lines.append(f"- Batch {bs}, error from best to worst: {order}.")
        if "channel" in dict((n, e) for e, n in ranked):
            position = [n for _, n in ranked].index("channel") + 1
            best_e, best_n = ranked[0]
            if best_n == "channel":
                runner = ranked[1] if len(ranked) > 1 else None
                if runner is None:
                    lines.append(f"  Per-channel statistics over (N,H,W) are the only scope measured at batch {bs}.")
                elif _beyond_noise(r.get("channel", bs), r.get(runner[1], bs), "eval_error", 0.01) > 0:
                    lines.append(f"  Per-channel statistics over (N,H,W) are the best scope at batch {bs}, "
                                 f"{100 * (runner[0] - best_e):.1f} points ahead of {runner[1]}.")
                else:
                    lines.append(f"  Per-channel statistics over (N,H,W) have the lowest mean error at batch {bs}, "
                                 f"but only {100 * (runner[0] - best_e):.1f} points ahead of {runner[1]}: a tie "
                                 "within seed noise.")
            else:
                gap = 100 * (r.get('channel', bs)['eval_error_mean'] - best_e)
                real = _beyond_noise(r.get(best_n, bs), r.get("channel", bs), "eval_error", 0.01) > 0
                lines.append(f"  Per-channel statistics rank {position} of {len(ranked)} at batch {bs}; "
                             f"{best_n} is better by {gap:.1f} points"
                             + ("." if real else " (within seed noise: not a real difference)."))
    none_rows = [r.get("none", bs) for bs in r.sizes if r.get("none", bs)]
    if none_rows and r.get("none", r.large) and r.get("none", r.large)["eval_error_mean"] is not None:
        none_row = r.get("none", r.large)
        none_e = none_row["eval_error_mean"]
        side = {n: _beyond_noise(none_row, r.get(n, r.large), "eval_error", 0.01) for n in r.norms if n != "none"}
        helped = [n for n, sign in side.items() if sign < 0]
        hurt = [n for n, sign in side.items() if sign > 0]
        lines.append(f"- Against no normalization ({_pct(none_e)} at batch {r.large}; differences under 1 point or "
                     f"within twice the seed noise ignored): better — {', '.join(helped) or 'nothing'}; worse — "
                     f"{', '.join(hurt) or 'nothing'}.")
    return lines


def _convergence(r: _Rows, config: ExperimentConfig) -> tuple[str, list[str]]:
    header = ["norm"]
    for bs in dict.fromkeys((r.large, r.small)):
        header += [f"loss after 25 % (batch {bs})", f"samples to loss ≤ {config.target_loss} (batch {bs})"]
    body = []
    for norm in r.norms:
        cells = [norm]
        for bs in dict.fromkeys((r.large, r.small)):
            row = r.get(norm, bs)
            if row is None:
                cells += ["—", "—"]
                continue
            loss = row["loss_at_quarter_mean"]
            cells.append("—" if loss is None else f"{loss:.3f}" + (f" ± {row['loss_at_quarter_std']:.3f}"
                                                                    if row["loss_at_quarter_std"] else ""))
            healthy = row["runs"] - row["diverged"]
            if row["reached_target"]:
                cells.append(f"{row['samples_to_target_mean']:.0f} ({row['steps_to_target_mean']:.0f} steps; "
                             f"{row['reached_target']}/{healthy} seeds)")
            else:
                cells.append(f"not reached in {row['samples']} (0/{healthy} seeds)")
        body.append(cells)
    lines = []
    for bs in dict.fromkeys((r.large, r.small)):
        none = r.get("none", bs)
        if none is None or none["loss_at_quarter_mean"] is None:
            continue
        side = {n: _beyond_noise(none, r.get(n, bs), "loss_at_quarter", 0.05) for n in r.norms if n != "none"}
        faster = [n for n, sign in side.items() if sign < 0]
        slower = [n for n, sign in side.items() if sign > 0]
        lines.append(f"- Batch {bs}: after a quarter of the samples, lower training loss than no normalization "
                     f"({none['loss_at_quarter_mean']:.3f}): {', '.join(faster) or 'nothing'}; higher: "
                     f"{', '.join(slower) or 'nothing'} (differences under 0.05 or within twice the seed noise "
                     "ignored).")
        channel = r.get("channel", bs)
        if channel is not None and channel["loss_at_quarter_mean"] is not None:
            verdict = ("supports" if "channel" in faster else "contradicts" if "channel" in slower
                       else "does not settle")
            lines.append(f"  Channel norm {channel['loss_at_quarter_mean']:.3f} vs none {none['loss_at_quarter_mean']:.3f}: "
                         f"this {verdict} the seed's claim of faster convergence at batch {bs}.")
    return _table(header, body), lines


def _gap_reading(r: _Rows) -> list[str]:
    lines = []
    bs = r.small
    for norm in r.norms:
        row = r.get(norm, bs)
        if row is None or row["train_eval_gap_mean"] is None:
            continue
        if norm in BATCH_STATISTIC_NORMS:
            lines.append(f"- **{norm}** at batch {bs}: {_pct(row['batch_stat_error_mean'])} error with the statistics "
                         f"of each test batch vs {_pct(row['eval_error_mean'])} with running statistics "
                         f"(gap {100 * row['train_eval_gap_mean']:+.1f} ± {100 * (row['train_eval_gap_std'] or 0):.1f} points).")
            gaps = [(r.get(norm, b)["train_eval_gap_mean"], b) for b in r.sizes
                    if r.get(norm, b) and r.get(norm, b)["train_eval_gap_mean"] is not None]
            widest = max(gaps, key=lambda g: abs(g[0]))
            if widest[1] != bs:
                lines.append(f"  Its widest gap is at batch {widest[1]}: {100 * widest[0]:+.1f} points.")
    independent = [abs(r.get(n, b)["train_eval_gap_mean"]) for n in r.norms for b in r.sizes
                   if n not in BATCH_STATISTIC_NORMS and r.get(n, b) and r.get(n, b)["train_eval_gap_mean"] is not None]
    if independent:
        lines.append(f"- Norms whose statistics do not involve the batch: largest |gap| {100 * max(independent):.2f} "
                     "points (expected 0: train and eval mode compute the same function; a nonzero value would "
                     "be a bug).")
    return lines


def write_report(rows: list[dict[str, Any]], config: ExperimentConfig, environment: dict[str, Any],
                 dataset: str, plot_name: str) -> str:
    r = _Rows(rows, config)
    timing = environment.get("sweep", {})
    sweeps = environment.get("sweeps", [timing])
    executed_wall = sum(s.get("wall_seconds", 0) for s in sweeps if s.get("executed"))
    # the runs' own planned samples (train_size is None for 'all', and a CIFAR-10 subset may be smaller
    # than asked); the config's arithmetic only for batch sizes with no finished run
    planned = {row["batch_size"]: int(row["samples"]) for row in rows if row.get("samples") is not None}
    if config.train_size:
        for b in config.batch_sizes:
            planned.setdefault(b, int(config.epochs * config.train_size) // b * b)
    steps = ", ".join(f"batch {b}: {planned[b] // b if b in planned else '?'} steps, peak LR "
                      f"{config.base_lr * b / config.reference_batch:g}" for b in sorted(config.batch_sizes))
    seen = sorted(set(planned.values()))
    samples_text = (str(seen[0]) if len(seen) == 1 else "/".join(map(str, seen)) if seen
                    else "epochs × training set")
    diverged = [(n, b, row["diverged"], row["runs"]) for (n, b), row in r.by_key.items() if row["diverged"]]
    expected = len(config.norms) * len(config.batch_sizes) * len(config.seeds)
    found = sum(row["runs"] for row in rows)
    conv_table, conv_lines = _convergence(r, config)
    paper = "; ".join(f"{n}: " + "/".join(f"{v}" for v in PAPER[n].values()) for n in PAPER)
    parts = [
        "# channelnorm compare — report",
        "",
        f"Command: `{environment.get('command', 'channelnorm compare')}` (grid: **{config.grid}**). "
        f"Measured wall time: {executed_wall:.0f} s over {len([s for s in sweeps if s.get('executed')])} "
        f"invocation(s) that trained runs ({_invocations(sweeps)}). Machine: {environment.get('cpu_count')} CPUs "
        f"({environment.get('platform')}); device {environment.get('device')}; torch {environment.get('torch')}, "
        f"Python {environment.get('python')}; runs trained at channelnorm git "
        f"{', '.join(sorted({str(s.get('git')) for s in sweeps if s.get('executed')})) or environment.get('git')}, "
        f"report written at {environment.get('git')}. Load averages (1/5/15 min) "
        "are from `os.getloadavg()`; on a shared machine they include other jobs.",
        "",
        "## Setup",
        "",
        f"- Data: {dataset}.",
        f"- Model: residual CNN (stem conv, three residual stages of widths {config.width}/{2 * config.width}/"
        f"{4 * config.width}, one block each), a norm after every conv (built with `channelnorm.create_norm`), "
        f"global average pooling, linear classifier.",
        f"- Grid: norms {', '.join(config.norms)}; batch sizes {', '.join(map(str, config.batch_sizes))}; seeds "
        f"{', '.join(map(str, config.seeds))} ({found} of {expected} runs finished).",
        f"- Every run sees the same {samples_text} "
        f"training samples ({config.epochs:g} epoch(s)). SGD momentum {config.momentum}, weight decay "
        f"{config.weight_decay}, LR {config.base_lr} × batch/{config.reference_batch} (linear scaling as in the "
        f"Group Norm paper), linear warm-up over the first {100 * config.warmup_fraction:.0f} % of the samples, "
        f"then cosine to zero ({steps}).",
        f"- Group norm and EvoNorm-S0 use the largest group count ≤ {config.max_groups} that divides the channels; "
        f"ghost norm uses virtual batches of min({config.ghost_batch}, batch); batch renorm rmax 3, dmax 5, limits "
        f"opened over the first {100 * config.renorm_warmup_fraction:.0f} % of steps.",
        "- Errors are on the held-out set, in %, mean ± sample std over seeds. *Eval mode* uses running "
        "statistics; *batch statistics* puts the model in train mode on a copy and normalizes each test batch "
        "(of the training batch size) with its own statistics.",
        "",
        "## 1. Error vs batch size",
        "",
        f"![error vs batch size]({plot_name})",
        "",
        "Eval mode (running statistics):",
        "",
        _error_table(r, "eval_error"),
        "",
        *_batch_size_reading(r),
        "",
        f"Reference (direction only — ResNet-50 on ImageNet, not this network or data), Group Norm paper, "
        f"error % at batch 32/16/8/4/2: {paper}; at 32, layer {PAPER_AT_32['layer']}, instance "
        f"{PAPER_AT_32['instance']}.",
        "",
        "## 2. Why per channel? Scopes on the same network",
        "",
        "Scopes: channel = per channel over (N,H,W); layer = per sample over (C,H,W); instance = per sample per "
        "channel over (H,W); group = per sample over groups of channels; none = identity.",
        "",
        *_scope_reading(r),
        "",
        "## 3. Convergence",
        "",
        f"Mean training loss (window ending at 25 % of the samples) and samples until the windowed training loss "
        f"first falls to ≤ {config.target_loss} (chance is ln 10 ≈ 2.303; steps = samples / batch):",
        "",
        conv_table,
        "",
        *conv_lines,
        "",
        "## 4. Train/eval discrepancy",
        "",
        "Error with batch statistics minus error with running statistics, points:",
        "",
        _gap_table(r),
        "",
        *_gap_reading(r),
        "",
        "## Diverged runs",
        "",
        ("\n".join(f"- {n} at batch {b}: {d} of {t} runs diverged (non-finite loss); they are excluded from the "
                   "means above." for n, b, d, t in diverged) if diverged else "None: every run kept a finite loss."),
        "",
        "## Limits",
        "",
        "- A small network, a small data set and few seeds on a CPU: the numbers answer these questions for this "
        "setup, not for ImageNet-scale training. The paper's numbers are a direction to compare with, not a target.",
        "- With the samples fixed and the LR scaled linearly, smaller batches also take more steps; a change with "
        "batch size mixes the effect of noisier statistics with that of the schedule (the batch-independent norms "
        "show the size of the second effect).",
    ]
    return "\n".join(parts) + "\n"


def _gap_table(r: _Rows) -> str:
    header = ["norm"] + [f"batch {b}" for b in r.sizes]
    body = []
    for norm in r.norms:
        cells = [norm]
        for bs in r.sizes:
            row = r.get(norm, bs)
            if row is None or row["train_eval_gap_mean"] is None:
                cells.append("—")
            else:
                std = row["train_eval_gap_std"]
                cells.append(f"{100 * row['train_eval_gap_mean']:+.1f}" + (f" ± {100 * std:.1f}" if std is not None else ""))
        body.append(cells)
    return _table(header, body)


def _invocations(sweeps: list[dict[str, Any]]) -> str:
    trained = [s for s in sweeps if s.get("executed")]
    rewrites = len(sweeps) - len(trained)
    suffix = f"; plus {rewrites} invocation(s) that found every run finished and only re-wrote the outputs" if rewrites else ""
    return "; ".join(f"{s.get('started')}: {s.get('executed', '?')} runs executed, {s.get('skipped', 0)} skipped, "
                     f"{s.get('wall_seconds', 0):.0f} s, {s.get('workers')} worker(s) with {s.get('threads_per_worker', 1)} torch thread(s) each, "
                     f"load {s.get('load_start')} → {s.get('load_end')}" for s in trained) + suffix


def _control(r: "_Rows") -> Optional[tuple[float, str]]:
    """(change large→small, name) of the batch-independent norm with the lowest error at the largest
    batch: it sees the same schedule change as the batch-statistic norms but no batch statistics."""
    candidates = []
    for norm in r.norms:
        if norm in BATCH_STATISTIC_NORMS or norm == "none":
            continue
        a, b = r.get(norm, r.large), r.get(norm, r.small)
        if a and b and a["eval_error_mean"] is not None and b["eval_error_mean"] is not None:
            candidates.append((a["eval_error_mean"], b["eval_error_mean"] - a["eval_error_mean"], norm))
    if not candidates or r.large == r.small:
        return None
    _, change, norm = min(candidates)
    return change, norm
