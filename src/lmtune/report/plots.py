"""Report figures as PNG bytes (matplotlib, Agg backend: no display, same output everywhere).

Each function takes plain data (lists and dicts as the JSON files hold them) and returns
the PNG, or None when there is nothing to draw; html.py embeds them as base64 data URIs so
report.html is one self-contained file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never try to open a window (servers, CI, notebooks)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

BLUE, ORANGE, GREEN, GREY, RED = "#2563eb", "#ea580c", "#16a34a", "#6b7280", "#dc2626"
PALETTE = [BLUE, ORANGE, GREEN, "#9333ea", "#0891b2", "#ca8a04", "#db2777", GREY]
#: Keys of metrics.jsonl events that are bookkeeping, not measurements.
EVENT_KEYS = {"time", "event", "step", "epoch", "tokens", "elapsed_s", "lr", "loss"}
STYLE = {
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
}


def png_bytes(fig: Figure) -> bytes:
    """Render a figure to PNG and close it (pyplot keeps every open figure alive otherwise)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight", dpi=110)
    finally:
        plt.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """A data: URI that an <img src> shows without any other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _series(events: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [
        (float(e["step"]), float(e[key]))
        for e in events
        if isinstance(e.get(key), (int, float)) and isinstance(e.get("step"), (int, float))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def loss_lr_plot(
    train_events: Sequence[dict[str, Any]], eval_events: Sequence[dict[str, Any]] = ()
) -> bytes | None:
    """Train loss (and eval loss at each evaluation) beside the learning rate, over steps."""
    steps, loss = _series(train_events, "loss")
    ev_steps, ev_loss = _series(eval_events, "eval_loss")
    lr_steps, lr = _series(train_events, "lr")
    if len(loss) < 2 and len(ev_loss) < 2:
        return None  # one point is no curve (the metrics table shows it)
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(
            1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 2]}
        )
        if loss:
            ax1.plot(
                steps,
                loss,
                color=BLUE,
                lw=1.6,
                marker="o" if len(loss) < 30 else None,
                ms=3,
                label="train loss",
            )
        if ev_loss:
            ax1.plot(ev_steps, ev_loss, color=ORANGE, lw=1.6, marker="s", ms=4, label="eval loss")
        ax1.set(xlabel="step", ylabel="loss", title="Loss (train: mean over each log window)")
        ax1.legend(frameon=False)
        if lr:
            ax2.plot(lr_steps, lr, color=GREEN, lw=1.6, marker="o" if len(lr) < 30 else None, ms=3)
            # Plain short numbers (7e-04) instead of an offset label that collides with the title.
            ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
        else:
            ax2.text(
                0.5,
                0.5,
                "no learning-rate records",
                ha="center",
                va="center",
                transform=ax2.transAxes,
            )
        ax2.set(xlabel="step", ylabel="learning rate", title="Learning rate")
        for ax in (ax1, ax2):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
        fig.tight_layout()
    return png_bytes(fig)


def _panels(
    groups: list[tuple[str, list[str]]], events: Sequence[dict[str, Any]], title: str
) -> bytes | None:
    groups = [(name, keys) for name, keys in groups if keys]
    if not groups:
        return None
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.6, 2.9 * rows), squeeze=False)
        for ax, (name, keys) in zip(axes.flat, groups, strict=False):
            for i, key in enumerate(keys):
                xs, ys = _series(events, key)
                ax.plot(
                    xs,
                    ys,
                    color=PALETTE[i % len(PALETTE)],
                    lw=1.5,
                    marker="o" if len(xs) < 30 else None,
                    ms=3,
                    label=key,
                )
            ax.set(xlabel="step", title=name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
            if len(keys) > 1:
                ax.legend(frameon=False, fontsize=7)
        for ax in list(axes.flat)[len(groups) :]:
            ax.set_visible(False)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return png_bytes(fig)


def _is_count(key: str) -> bool:
    from lmtune.report.collect import is_count

    return is_count(key)


def eval_metrics_plot(eval_events: Sequence[dict[str, Any]]) -> bytes | None:
    """Every eval metric over steps: those in [0, 1] share a panel, the rest get their own.

    eval_loss is on the loss plot and example/token counts are not measurements, so both
    are left out; a single evaluation is no curve (the report's table shows it).
    """
    if len(eval_events) < 2:
        return None
    keys: list[str] = []
    for e in eval_events:
        keys += [
            k
            for k, v in e.items()
            if k not in keys
            and k not in EVENT_KEYS
            and k != "eval_loss"
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and not _is_count(k)
        ]
    if not keys:
        return None
    # Rates where higher is better share a panel; an error rate (ece) would read upside down there.
    unit = [
        k
        for k in keys
        if k != "ece"
        and not k.endswith("loss")
        and all(0.0 <= y <= 1.0 for y in _series(eval_events, k)[1])
    ]
    if len(unit) > 5:  # weighted averages mostly repeat the macro ones: keep the panel legible
        unit = [k for k in unit if not k.startswith("weighted_")][:6]
    keys = [k for k in keys if k in unit or not k.startswith("weighted_")]
    groups = [("metrics in [0, 1]" if len(unit) > 1 else "".join(unit), unit)] + [
        (k, [k]) for k in keys if k not in unit
    ]
    return _panels(groups[:9], eval_events, "Evaluation metrics over training")


def train_extras_plot(train_events: Sequence[dict[str, Any]]) -> bytes | None:
    """Extra per-step measurements some tasks log (rlhf: reward, KL, lengths), one panel each."""
    keys: list[str] = []
    for e in train_events:
        keys += [
            k
            for k, v in e.items()
            if k not in keys
            and k not in EVENT_KEYS
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
        ]
    if len(train_events) < 2:
        return None
    return _panels([(k, [k]) for k in keys[:9]], train_events, "Training measurements")


def confusion_matrix_plot(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> bytes | None:
    """Heatmap coloured by the share of each gold row, annotated with the counts."""
    cm = np.asarray(matrix, dtype=float)
    k = len(labels)
    if k == 0 or cm.shape != (k, k):
        return None
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = min(max(3.2, 0.55 * k + 2.2), 14)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(
            range(k),
            [str(x) for x in labels],
            rotation=45 if k > 3 else 0,
            ha="right" if k > 3 else "center",
        )
        ax.set_yticks(range(k), [str(x) for x in labels])
        ax.set(
            xlabel="predicted",
            ylabel="gold",
            title="Confusion matrix (colour: share of the gold row)",
        )
        if k <= 25:
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        f"{int(cm[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=8 if k < 12 else 6,
                        color="white" if share[i, j] > 0.55 else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
    return png_bytes(fig)


def reliability_plot(bins: Sequence[dict[str, Any]], ece: float) -> bytes | None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts below."""
    used = [b for b in bins if b.get("count")]
    if not used:
        return None
    with plt.rc_context(STYLE):
        fig, (ax, axc) = plt.subplots(
            2, 1, figsize=(5.2, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        width = bins[0]["high"] - bins[0]["low"]
        centers = [(b["low"] + b["high"]) / 2 for b in used]
        ax.bar(
            centers,
            [b["accuracy"] for b in used],
            width=width * 0.92,
            color=BLUE,
            alpha=0.85,
            edgecolor="white",
            label="accuracy in bin",
        )
        # The bin's mean confidence as a tick across its bar: the gap to the bar top is the
        # miscalibration, readable in both directions (over- and under-confident).
        ax.hlines(
            [b["confidence"] for b in used],
            [c - width * 0.46 for c in centers],
            [c + width * 0.46 for c in centers],
            colors=RED,
            lw=2.2,
            label="mean confidence in bin",
        )
        ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
        ax.set(
            ylabel="accuracy",
            xlim=(0, 1),
            ylim=(0, 1),
            title=f"Reliability diagram (ECE {ece:.3f})",
        )
        ax.legend(frameon=False, loc="upper left", fontsize=7)
        axc.bar(centers, [b["count"] for b in used], width=width * 0.92, color=GREY)
        axc.set(xlabel="confidence (probability of the predicted class)", ylabel="examples")
        fig.tight_layout()
    return png_bytes(fig)


def per_class_plot(per_class: dict[str, dict[str, Any]]) -> bytes | None:
    """Precision, recall and F1 of every class as grouped horizontal bars (support in the label)."""
    names = list(per_class)
    if not names:
        return None
    y = np.arange(len(names))
    h = 0.26
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(
            figsize=(7.5, max(2.4, 0.62 * len(names) + 1.2)), layout="constrained"
        )
        for i, (key, color) in enumerate((("precision", BLUE), ("recall", ORANGE), ("f1", GREEN))):
            ax.barh(
                y + (i - 1) * h,
                [float(per_class[n].get(key, 0.0)) for n in names],
                height=h,
                color=color,
                label=key,
            )
        ax.set_yticks(y, [f"{n} (n={per_class[n].get('support', '?')})" for n in names])
        ax.invert_yaxis()  # first class on top, as in the table
        ax.set(xlim=(0, 1.0), xlabel="score")
        ax.set_title("Per-class precision, recall and F1", loc="left")
        fig.legend(frameon=False, loc="outside upper right", fontsize=7, ncols=3)
    return png_bytes(fig)


def baselines_plot(rows: Sequence[dict[str, Any]], metric: str = "accuracy") -> bytes | None:
    """One bar per method (zero-shot, few-shot, fine-tuned) with the std over seeds as error bar."""
    rows = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not rows:
        return None
    names = [f"{r.get('method', '?')}" + (f" (k={r['k']})" if r.get("k") else "") for r in rows]
    values = [float(r[metric]) for r in rows]
    errs = [float(r.get(f"{metric}_std") or 0.0) for r in rows]
    bar_errs = [e if e > 0 else np.nan for e in errs]  # no error bar (and no cap) for a single run
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.0, 1.5 * len(rows) + 1.5), 3.2))
        colors = [GREEN if r.get("method") == "fine-tuned" else GREY for r in rows]
        bars = ax.bar(names, values, yerr=bar_errs, capsize=4, color=colors)
        for bar, v, e in zip(bars, values, errs, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                v + e,
                f"{v:.4f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set(
            ylabel=metric,
            ylim=(0, max(1.0, max(values) * 1.15)),
            title=f"Baselines vs fine-tuned ({metric})",
        )
        fig.tight_layout()
    return png_bytes(fig)
