"""Figures and report.html of a search: optimisation history, parameter importances, slices.

Plain data in (the rows of trials.json), PNG bytes out, drawn with the same style helpers as
the run report; report.html embeds them as base64 so it is one self-contained file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt

from lmtune.report.htmlkit import CSS, esc, figure, para, section, table
from lmtune.report.plots import BLUE, GREEN, GREY, ORANGE, STYLE, png_bytes


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def history_plot(rows: Sequence[dict[str, Any]], metric: str, direction: str) -> bytes | None:
    """Each trial's value in order, pruned trials at their last report, and the best so far."""
    scored = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED") and _finite(r["value"])]
    if not scored:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        done = [r for r in scored if r["state"] == "COMPLETE"]
        pruned = [r for r in scored if r["state"] == "PRUNED"]
        if done:
            ax.scatter(
                [r["number"] for r in done],
                [r["value"] for r in done],
                color=BLUE,
                s=28,
                zorder=3,
                label="complete",
            )
        if pruned:
            ax.scatter(
                [r["number"] for r in pruned],
                [r["value"] for r in pruned],
                color=GREY,
                marker="x",
                s=28,
                zorder=3,
                label="pruned (value at its last evaluation)",
            )
        best, xs, ys = None, [], []
        for r in sorted(done, key=lambda r: r["number"]):
            if best is None or (
                r["value"] > best if direction == "maximize" else r["value"] < best
            ):
                best = r["value"]
            xs.append(r["number"])
            ys.append(best)
        if xs:
            last = max(r["number"] for r in scored)
            xs, ys = xs + [last], ys + [ys[-1]]  # the best so far still holds after the last trial
            ax.step(xs, ys, where="post", color=ORANGE, lw=1.6, label="best so far")
        ax.set(xlabel="trial", ylabel=metric, title=f"Optimisation history ({direction} {metric})")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False, fontsize=8)
        fig.tight_layout()
    return png_bytes(fig)


def importance_plot(importances: dict[str, float], metric: str) -> bytes | None:
    """Horizontal bars: how much each searched key explains of the good trials (PED-ANOVA)."""
    if not importances:
        return None
    items = sorted(importances.items(), key=lambda kv: kv[1])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 0.5 + 0.45 * len(items)))
        ax.barh([k for k, _ in items], [v for _, v in items], color=GREEN)
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax.set(
            xlabel="importance (PED-ANOVA, sums to 1)", title=f"Parameter importance for {metric}"
        )
        fig.tight_layout()
    return png_bytes(fig)


def _axis_values(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers stay numbers; anything else (strings, lists, booleans) becomes ordered categories."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    names = [json.dumps(v) if isinstance(v, list) else str(v) for v in values]
    order = sorted(set(names))
    return [float(order.index(n)) for n in names], order


def slice_plot(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], log_keys: set[str], metric: str
) -> bytes | None:
    """One panel per searched key: the trial values against that key's value."""
    scored = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED") and _finite(r["value"])]
    keys = [k for k in keys if any(k in r["params"] for r in scored)]
    if not scored or not keys:
        return None
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys, strict=False):
            have = [r for r in scored if key in r["params"]]
            xs, cats = _axis_values([r["params"][key] for r in have])
            colors = [BLUE if r["state"] == "COMPLETE" else GREY for r in have]
            ax.scatter(xs, [r["value"] for r in have], c=colors, s=24, zorder=3)
            if cats is not None:
                ax.set_xticks(
                    range(len(cats)),
                    [c if len(c) < 18 else c[:16] + "…" for c in cats],
                    rotation=20,
                    fontsize=7,
                )
            elif key in log_keys or (min(xs) > 0 and max(xs) / min(xs) >= 100):
                ax.set_xscale("log")  # learning rates and the like: decades apart
            ax.set(xlabel=key, ylabel=metric)
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        fig.suptitle("Slices (grey: pruned trials)", fontsize=10)
        fig.tight_layout()
    return png_bytes(fig)


def _value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, list) else v


def report_html(
    name: str,
    summary: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    figures: dict[str, bytes | None],
) -> str:
    """The search as one self-contained HTML page: outcome, trials table, figures, notes."""
    metric, best = summary["metric"], summary.get("best")
    states = ", ".join(f"{v} {k.lower()}" for k, v in summary["states"].items())
    tiles = [
        ("best " + metric, f"{best['value']:.4f}" if best else "–"),
        ("best trial", str(best["number"]) if best else "–"),
        ("trials", states or "0"),
        ("wall time (this invocation)", f"{summary['wall_time_s']:.0f} s"),
    ]
    head = "".join(
        f'<div class="tile"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for k, v in tiles
    )
    sub = (
        f"sampler {summary['sampler']}, pruner {summary['pruner']}, {summary['direction']} {metric}; "
        f"study {summary['study']}"
    )
    trial_rows = [
        [
            r["number"],
            r["state"].lower(),
            r["value"],
            *[_value(r["params"].get(k)) for k in keys],
            r["duration_s"],
            r["pruned_at_step"],
            r["run_dir"],
        ]
        for r in rows
    ]
    trials = table(
        ["trial", "state", metric, *keys, "time (s)", "pruned at step", "run folder"], trial_rows
    )
    outcome = ""
    if best:
        params = table(["key", "value"], [[k, _value(v)] for k, v in best["params"].items()], "kv")
        outcome = (
            para(
                f"Trial {best['number']} scored {metric} {best['value']:.4f}. Its full config is in "
                f"{best['config']}; train it with `lmtune train {best['config']}`."
            )
            + params
        )
    figs = "".join(
        figure(figures.get(k), alt, cap)
        for k, alt, cap in (
            ("history", "optimisation history", "Each trial's value; the line is the best so far."),
            (
                "importance",
                "parameter importance",
                "Share of the difference between good and other trials "
                "each key explains (few trials: a rough guide).",
            ),
            ("slices", "slices", "Trial value against each searched key."),
        )
    )
    notes = "".join(para(n, "muted") for n in summary.get("notes") or [])
    body = (
        section("best", "Best trial", outcome or para("No trial completed yet."))
        + section("trials", "Trials", trials)
        + section("plots", "Plots", figs)
        + section("notes", "Notes", notes)
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(name)}: search</title>"
        f"<style>{CSS}</style></head><body><main><header><h1>Hyperparameter search: {esc(name)}</h1>"
        f"<p class='sub'>{esc(sub)}</p><div class='tiles'>{head}</div></header>{body}"
        "<footer>written by lmtune tune</footer></main></body></html>"
    )
