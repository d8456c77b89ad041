"""`lmtune monitor report`: report.html (plots embedded as base64 PNG) and monitor.json.

Three panels over the records in order (each labelled with its batch and date, a dotted
line where a new model version was released): the metric of every labelled batch with the
release-time value and alert level; the PSI of lengths, labels and predictions with the
alert threshold; the OOV and unknown-token rates with the training reference and alert level.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lmtune.config import MonitorConfig
from lmtune.errors import UserError
from lmtune.ops.monitor import RECORD_COLUMNS, Target, evaluate, parse_now, record_row


def _plot(
    title: str,
    records: list[dict],
    series: dict[str, list[float | None]],
    hlines: list[tuple[float, str, str]],
) -> bytes:
    """One panel over the records in order: a line per series (gaps where None), dashed
    reference lines, and a dotted line where a new model version starts (a release)."""
    import matplotlib.pyplot as plt

    from lmtune.report.plots import GREY, PALETTE, STYLE, png_bytes

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 3.2))
        for i, (name, ys) in enumerate(series.items()):
            pts = [(x, y) for x, y in enumerate(ys) if y is not None]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True), color=PALETTE[i], marker="o", ms=4, lw=1.5, label=name
                )
        for y, label, color in hlines:
            ax.axhline(y, color=color, ls="--", lw=1, label=label)
        for i, r in enumerate(records):
            if i == 0 or r["model_version"] != records[i - 1]["model_version"]:
                ax.axvline(i - 0.5, color=GREY, ls=":", lw=1.2)
                ax.annotate(
                    f"release {r['model_version']}",
                    (i - 0.45, 1.0),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    color=GREY,
                    va="top",
                )
        # Records are the time axis: evenly spaced, labelled with batch and date (many share a day).
        ax.set_xticks(
            range(len(records)),
            [f"{r['batch']}\n{r['time'][:10]}" for r in records],
            rotation=30,
            ha="right",
            fontsize=7,
        )
        ax.set(title=title, xlim=(-0.6, len(records) - 0.4))
        ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
    return png_bytes(fig)


def _plots(records: list[dict], target: Target, th: MonitorConfig) -> list[tuple[bytes, str]]:
    """(PNG, caption): the metric with the release-time value, PSI, and OOV rate over time."""
    from lmtune.report.plots import GREY, RED

    drift = [r["drift"] for r in records]
    rel = target.release_metrics.get(th.metric)
    floor = (
        None
        if rel is None
        else rel - th.max_metric_drop
        if th.mode == "max"
        else rel + th.max_metric_drop
    )
    metric_lines = (
        [] if rel is None else [(rel, "release-time value", GREY), (floor, "alert level", RED)]
    )
    ref = next((d["oov_reference"] for d in reversed(drift) if "oov_reference" in d), None)
    oov_lines = (
        []
        if ref is None
        else [(ref, "training reference", GREY), (ref + th.max_oov_increase, "alert level", RED)]
    )
    return [
        (
            _plot(
                f"{th.metric} over time",
                records,
                {th.metric: [r["metrics"].get(th.metric) for r in records]},
                metric_lines,
            ),
            f"{th.metric} of every labelled batch beside the release-time value of the current version",
        ),
        (
            _plot(
                "PSI against the training data",
                records,
                {
                    k: [d.get(k) for d in drift]
                    for k in ("length_psi", "label_psi", "prediction_psi")
                },
                [(th.psi_threshold, "alert threshold", RED)],
            ),
            "population stability index of token lengths, gold labels and predicted labels",
        ),
        (
            _plot(
                "out-of-vocabulary rate",
                records,
                {k: [d.get(k) for d in drift] for k in ("oov_rate", "unk_rate")},
                oov_lines,
            ),
            "share of words outside the training vocabulary, and of the tokenizer's unknown tokens",
        ),
    ]


def report(
    target_path: Path,
    db: Path | None = None,
    out: Path | None = None,
    now: str | None = None,
    config: Path | None = None,
    sets: list[str] | None = None,
) -> Path:
    """Write report.html (self-contained: plots embedded) and monitor.json; returns the folder."""
    from lmtune.report.htmlkit import CSS, esc, figure, section, table

    target, th, path, records, checks = evaluate(target_path, db, now, config, sets)
    if not records:
        raise UserError(f"no records in {path}; record a batch first with `lmtune monitor record`")
    out = Path(out) if out else path.parent / "monitor_report"
    out.mkdir(parents=True, exist_ok=True)
    alerts = [c.name for c in checks if c.status == "ALERT"]
    summary = {
        "generated_at": parse_now(now).isoformat(timespec="seconds"),
        "model_version": target.version,
        "model_dir": str(target.model_dir),
        "database": str(path),
        "thresholds": th.model_dump(),
        "release": {
            "time": target.release_time.isoformat(timespec="seconds"),
            "metrics": target.release_metrics,
            "source": target.release_metrics_source,
        },
        "alerts": alerts,
        "checks": [asdict(c) for c in checks],
        "records": records,
    }
    (out / "monitor.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    verdict = (
        f'<div class="box warn"><h2>ALERT: {esc(", ".join(alerts))}</h2></div>'
        if alerts
        else '<div class="box ok">all checks OK</div>'
    )
    body = "".join(
        [
            f"<header><h1>Monitoring: {esc(target.version)}</h1><p class='sub'>{esc(target.model_dir)} · "
            f"generated {esc(summary['generated_at'])}</p></header>",
            verdict,
            section(
                "checks",
                "Checks (latest records of the current version)",
                table(
                    ["check", "result", "value", "threshold", "detail"],
                    [(c.name, c.status, c.value, c.threshold, c.detail) for c in checks],
                ),
            ),
            section(
                "plots",
                "Over time",
                "".join(figure(png, cap, cap) for png, cap in _plots(records, target, th)),
            ),
            section(
                "records",
                "Records",
                table(
                    [h.replace("METRIC", th.metric) for h in RECORD_COLUMNS],
                    [record_row(r, th.metric) for r in records],
                ),
            ),
        ]
    )
    html = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>lmtune monitor: {esc(target.version)}"
        f"</title><style>{CSS}</style></head><body><main>{body}</main></body></html>"
    )
    (out / "report.html").write_text(html, encoding="utf-8")
    return out
