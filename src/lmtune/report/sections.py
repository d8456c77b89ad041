"""The sections of report.html, in page order; each returns '' when its data is absent."""

from __future__ import annotations

from typing import Any

from lmtune.report import plots
from lmtune.report.calibration import expected_calibration_error, reliability_bins
from lmtune.report.collect import (
    Folder,
    headline,
    is_count,
    scalar_metrics,
    weight_average_text,
)
from lmtune.report.htmlkit import Styled, esc, facts, figure, fmt, kv_table, para, section, table

#: Metrics shown first in the header tiles, when present.
HEADLINE_ORDER = (
    "accuracy",
    "macro_f1",
    "f1",
    "exact",
    "pairwise_accuracy",
    "reward_accuracy",
    "eval_loss",
    "perplexity",
    "token_accuracy",
    "ece",
    "mean_reward",
)
MAX_ERRORS = 25


def header(f: Folder) -> str:
    """Title, what was trained from what, and the headline metrics as tiles."""
    facts = [
        ("task", f.task or "unknown"),
        (
            "base model",
            f.meta.get("base_model") or (f.config.get("model") or {}).get("name_or_path"),
        ),
        ("adapter", f.meta.get("adapter") or (f.config.get("adapter") or {}).get("type")),
    ]
    sub = " · ".join(f"{esc(k)} <code>{esc(v)}</code>" for k, v in facts if v)
    kind = "evaluation" if f.kind == "eval" else "training run"
    where, metrics = headline(f)
    picked = [k for k in HEADLINE_ORDER if k in metrics][:6]
    tiles = "".join(
        f'<div class="tile"><div class="v">{esc(fmt(metrics[k]))}</div><div class="k">{esc(k)}</div></div>'
        for k in picked
    )
    where_html = f'<p class="where">metrics on: {esc(where)}</p>' if picked else ""
    return (
        f'<header><h1>{esc(f.name)}</h1><p class="sub">{esc(kind)} · {sub}</p>'
        f'<div class="tiles">{tiles}</div>{where_html}</header>'
    )


def overfitting_messages(data: dict[str, Any]) -> list[str]:
    """Human-readable flags from summary.json's overfitting entry, whatever its exact shape."""
    msgs: list[str] = []
    flags = data.get("flags")
    if isinstance(flags, list):
        for item in flags:
            if isinstance(item, dict):
                msgs.append(
                    str(item.get("message") or item.get("reason") or item.get("name") or item)
                )
            elif item:
                msgs.append(str(item))
    elif isinstance(flags, dict):
        msgs += [k if v is True else f"{k}: {v}" for k, v in flags.items() if v]
    for key in ("messages", "warnings"):
        if isinstance(data.get(key), list):
            msgs += [str(m) for m in data[key] if m]
    if "flags" not in data:  # a flat shape: {"eval_loss_rising": true, "gap": 0.2, ...}
        msgs = [
            k.replace("_", " ")
            for k, v in data.items()
            if v is True and k not in ("flagged", "overfitting")
        ]
    return msgs


def overfitting(f: Folder) -> str:
    """A warning box when training shows overfitting (train/eval gap, eval loss rising)."""
    data = f.summary.get("overfitting")
    if not isinstance(data, dict) or not data:
        return ""
    msgs = overfitting_messages(data)
    flagged = bool(msgs) or data.get("flagged") is True or data.get("overfitting") is True
    details = f"<details><summary>all overfitting checks</summary>{kv_table(data)}</details>"
    if not flagged:
        return f'<div class="box ok" id="overfitting">No overfitting signs flagged. {details}</div>'
    items = "".join(f"<li>{esc(m)}</li>" for m in msgs) or "<li>flagged (see the checks below)</li>"
    return (
        f'<div class="box warn" id="overfitting"><h2>⚠ Possible overfitting</h2><ul>{items}</ul>'
        f"<p>Prefer the best checkpoint (kept in model/), more data, fewer epochs or stronger "
        f"regularisation.</p>{details}</div>"
    )


SUMMARY_KEYS = (
    "train_steps",
    "train_runtime_s",
    "train_samples",
    "train_samples_per_s",
    "train_tokens_per_s",
    "peak_rss_mb",
    "final_train_loss",
    "best_metric",
    "best_metric_value",
    "best_step",
    "stopped_early",
    "precision",
    "eval_precision",
    "world_size",
    "trainable_params",
    "total_params",
)


def run_facts(f: Folder) -> str:
    """Training figures from summary.json, or what an eval folder evaluated."""
    if f.kind == "eval":
        rows = [(k, f.eval[k]) for k in ("model", "data", "rows", "rejected") if k in f.eval]
        return section("summary", "Evaluation", facts(rows))
    s = f.summary
    rows = [(k, s[k]) for k in SUMMARY_KEYS if s.get(k) is not None]
    if (average := weight_average_text(s)) is not None:
        rows.append(("weight average", average))
    if isinstance(s.get("data"), dict):
        rows += [(f"{split} rows", n) for split, n in s["data"].items()]
    if s.get("trainable_params") and s.get("total_params"):
        rows.append(("trainable share", f"{100 * s['trainable_params'] / s['total_params']:.2f}%"))
    return section("summary", "Run summary", facts(rows))


def curves(f: Folder) -> str:
    """Loss and learning rate, eval metrics over steps, extra training measurements."""
    body = figure(
        plots.loss_lr_plot(f.train_events, f.eval_events), "loss and learning rate over steps"
    )
    body += figure(plots.eval_metrics_plot(f.eval_events), "evaluation metrics over steps")
    body += figure(plots.train_extras_plot(f.train_events), "training measurements over steps")
    if f.eval_events:
        keys = [k for k in scalar_metrics(f.eval_events[0]) if k in f.eval_events[0]]
        rows = [[e.get("step"), *[e.get(k) for k in keys]] for e in f.eval_events]
        body += (
            f"<details><summary>every evaluation ({len(rows)})</summary>"
            f"{table(['step', *keys], rows)}</details>"
        )
    return section("curves", "Training curves", body)


def metrics(f: Folder) -> str:
    """The final metrics, beside the untrained model's when the run measured it."""
    where, values = headline(f)
    if not values:
        return ""
    split = str(f.eval.get("split") or "eval") if f.kind == "run" and f.eval else "eval"
    before = ((f.summary.get("eval_before") or {}).get(split) or {}) if f.kind == "run" else {}
    if before:
        rows = [[k, v, before.get(k), change(k, v, before.get(k))] for k, v in values.items()]
        body = table(["metric", "after training", "before training", "change"], rows)
    else:
        body = table(["metric", "value"], list(values.items()))
    return section("metrics", "Metrics", para(f"On the {where}.", "muted") + body)


def lower_is_better(metric: str) -> bool:
    """Losses, perplexity and calibration error improve downwards; the rest upwards."""
    return metric.endswith("loss") or metric in ("perplexity", "ece") or metric.endswith("_nll")


def change(metric: str, after: float, before: Any) -> Styled | None:
    """after - before, coloured better/worse (None for counts and unknown before values)."""
    if not isinstance(before, (int, float)) or is_count(metric):
        return None
    delta = after - float(before)
    good = delta < 0 if lower_is_better(metric) else delta > 0
    return Styled(delta, "" if delta == 0 else "better" if good else "worse")


def _details(f: Folder) -> dict[str, Any]:
    d = f.eval.get("details")
    return d if isinstance(d, dict) else {}


def per_class(f: Folder) -> str:
    """Precision, recall, F1 and support of each class (classification)."""
    pc = _details(f).get("per_class")
    if not isinstance(pc, dict) or not pc:
        return ""
    rows = [
        [name, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
        for name, m in pc.items()
    ]
    body = table(["class", "precision", "recall", "F1", "support"], rows)
    body += figure(plots.per_class_plot(pc), "per-class precision, recall and F1")
    return section("per-class", "Per-class metrics", body)


def confusion(f: Folder) -> str:
    """Confusion matrix heatmap (gold rows, predicted columns) with counts."""
    cm = _details(f).get("confusion_matrix")
    if not isinstance(cm, dict) or not cm.get("labels"):
        return ""
    png = plots.confusion_matrix_plot(cm["labels"], cm.get("matrix") or [])
    rows = [
        [gold, *counts] for gold, counts in zip(cm["labels"], cm.get("matrix") or [], strict=False)
    ]
    body = figure(
        png, "confusion matrix", "Rows: gold label; columns: predicted label; numbers: examples."
    )
    grid = table(["gold \\ predicted", *cm["labels"]], rows)
    body += f"<details><summary>as a table</summary>{grid}</details>"
    return section("confusion", "Confusion matrix", body)


def calibration_data(predictions: list[dict[str, Any]]) -> tuple[list[float], list[bool]]:
    """(confidence, correct) per prediction row that has a probability and a gold label."""
    conf, ok = [], []
    for p in predictions:
        if (
            isinstance(p.get("prob"), (int, float))
            and p.get("label") is not None
            and p.get("pred") is not None
        ):
            conf.append(float(p["prob"]))
            ok.append(str(p["pred"]) == str(p["label"]))
    return conf, ok


def calibration(f: Folder) -> str:
    """Reliability diagram and ECE from predictions.jsonl (classification)."""
    conf, ok = calibration_data(f.predictions)
    if not conf:
        return ""
    bins = reliability_bins(conf, ok)
    ece = expected_calibration_error(conf, ok)
    text = (
        f"Expected calibration error (ECE, 10 equal-width bins) over {len(conf)} predictions: {ece:.4f}. "
        "Bars below the diagonal: the model is more confident than it is accurate."
    )
    rows = [
        [f"{b['low']:.1f}–{b['high']:.1f}", b["count"], b["confidence"], b["accuracy"]]
        for b in bins
        if b["count"]
    ]
    body = para(text) + figure(plots.reliability_plot(bins, ece), "reliability diagram")
    body += f"<details><summary>bins</summary>{table(['confidence bin', 'examples', 'mean confidence', 'accuracy'], rows)}</details>"
    return section("calibration", "Calibration", body)


#: Column order for error rows: the known fields first, then any others.
ERROR_COLUMNS = (
    "gold",
    "predicted",
    "confidence",
    "text",
    "text_pair",
    "question",
    "answers",
    "prediction",
    "exact",
    "f1",
    "source",
)


def errors(f: Folder) -> str:
    """The worst errors (errors.jsonl is written most confident mistake first)."""
    if not f.errors:
        return ""
    shown = f.errors[:MAX_ERRORS]
    cols = [c for c in ERROR_COLUMNS if any(c in e for e in shown)]
    cols += [c for e in shown for c in e if c not in cols]
    cols = list(dict.fromkeys(cols))
    rows = [[e.get(c, "") for c in cols] for e in shown]
    note = (
        f"{len(f.errors)} error(s) in errors.jsonl"
        + (f"; the first {len(shown)} shown" if len(shown) < len(f.errors) else "")
        + ", most confident first (confidence: probability of the wrong prediction)."
    )
    return section("errors", "Worst errors", para(note, "muted") + table(cols, rows, "errors"))


def baselines(f: Folder) -> str:
    """Zero-shot and few-shot baselines of the base model beside the fine-tuned model."""
    b = f.extras.get("baselines")
    if not b:
        return ""
    metric = str(b.get("metric") or "accuracy")
    rows_in = [r for r in b.get("rows") or [] if isinstance(r, dict)]
    keys = ["method", "k", metric, f"{metric}_std", "macro_f1", "macro_f1_std", "seeds"]
    keys = [k for k in keys if any(k in r for r in rows_in)]
    keys += list(dict.fromkeys(k for r in rows_in for k in r if k not in keys))
    body = table(keys, [[r.get(k) for k in keys] for r in rows_in]) if rows_in else ""
    body += figure(plots.baselines_plot(rows_in, metric), f"baselines ({metric})")
    rest = kv_table(b, skip=("rows", "metric"))
    body += f"<details><summary>baseline settings</summary>{rest}</details>" if rest else ""
    return section("baselines", "Baselines", body)


def forgetting(f: Folder) -> str:
    """How much general ability fine-tuning cost, measured before and after."""
    d = f.extras.get("forgetting")
    if not d:
        return ""
    body = ""
    if isinstance(d.get("before"), (int, float)) and isinstance(d.get("after"), (int, float)):
        hib = d.get("higher_is_better")
        worse = (
            (d["after"] < d["before"])
            if hib
            else (d["after"] > d["before"])
            if hib is False
            else None
        )
        rel = d.get("rel_change")
        body += table(
            ["measure", "reference", "before", "after", "change", "relative change"],
            [
                [
                    d.get("measure"),
                    d.get("reference"),
                    d["before"],
                    d["after"],
                    d.get("abs_change"),
                    f"{rel:+.1%}" if isinstance(rel, (int, float)) else rel,
                ]
            ],
        )
        if worse is not None:
            direction = "higher" if hib else "lower"
            text = (
                f"{d.get('measure')} went from {fmt(d['before'])} to {fmt(d['after'])} ({direction} is "
                f"better): {'worse' if worse else 'not worse'} after fine-tuning."
            )
            body += para(text, "worse" if worse else "better")
    body += kv_table(
        d, skip=("measure", "reference", "before", "after", "abs_change", "rel_change")
    )
    return section("forgetting", "Forgetting", body)


def _overall_rows(part: dict[str, Any], before: dict[str, Any] | None, group: str) -> str:
    out = ""
    overall = part.get("overall")
    if isinstance(overall, dict):
        keys = list(overall)
        rows = [["after", *[overall.get(k) for k in keys]]]
        prev = (before or {}).get("overall")
        if isinstance(prev, dict):
            rows.append(["before", *[prev.get(k) for k in keys]])
        out += table(["", *keys], rows)
    groups = part.get(group)
    if isinstance(groups, dict) and groups:
        keys = list(dict.fromkeys(k for g in groups.values() if isinstance(g, dict) for k in g))
        out += table(
            [group.replace("_", " "), *keys],
            [[name, *[(g or {}).get(k) for k in keys]] for name, g in groups.items()],
        )
    rest = kv_table(part, skip=("overall", group, "worst"))
    return out + (f"<details><summary>more</summary>{rest}</details>" if rest else "")


def audit(f: Folder) -> str:
    """Bias audit: CrowS-Pairs stereotype score and counterfactual flip rates."""
    a = f.extras.get("audit")
    if not a:
        return ""
    before = a.get("before") if isinstance(a.get("before"), dict) else {}
    body = ""
    cp = a.get("crows_pairs")
    if isinstance(cp, dict):
        body += "<h3>CrowS-Pairs</h3>" + para(
            "Score: share of pairs where the model prefers the more "
            "stereotypical sentence; 0.5 is unbiased.",
            "muted",
        )
        body += _overall_rows(cp, before.get("crows_pairs"), "by_type")
    cf = a.get("counterfactual")
    if isinstance(cf, dict):
        body += "<h3>Counterfactual swaps</h3>" + para(
            "Flip rate: share of texts whose prediction changes "
            "when a demographic term is swapped.",
            "muted",
        )
        body += _overall_rows(cf, before.get("counterfactual"), "by_category")
        worst = [w for w in cf.get("worst") or [] if isinstance(w, dict)]
        if worst:
            cols = list(dict.fromkeys(k for w in worst for k in w))
            body += "<h3>Largest changes</h3>" + table(
                cols, [[w.get(c) for c in cols] for w in worst], "errors"
            )
    body += kv_table(a, skip=("crows_pairs", "counterfactual", "before"))
    return section("bias", "Bias audit", body)


def data(f: Folder) -> str:
    """Data sizes, drops, redactions and label distribution from data_report.json."""
    r = f.data_report
    if not r:
        return ""
    rows = [
        ("rows in", r.get("rows_in")),
        *[(f"rows out: {k}", v) for k, v in (r.get("rows_out") or {}).items()],
        ("rows dropped", (r.get("drops") or {}).get("total")),
        ("rows added (oversampling)", r.get("rows_added")),
    ]
    body = facts(rows)
    drops = (r.get("drops") or {}).get("by_reason") or {}
    if drops:
        body += "<h3>Dropped rows</h3>" + table(
            ["stage", "reason", "rows"],
            [[s, why, n] for s, d in drops.items() for why, n in d.items()],
        )
    lk = r.get("leakage") or {}
    if lk.get("checked"):
        body += para(
            f"Leakage check: {fmt(lk.get('train_rows_leaking'))} train row(s) also in eval/test "
            f"(exact or near duplicates); {fmt(lk.get('removed_from_train'))} removed from train."
        )
    red = {k: v for k, v in (r.get("redactions") or {}).items() if v}
    body += "<h3>Redactions</h3>" + (
        table(["kind", "replacements"], list(red.items()))
        if red
        else para(
            "No personal data or secrets were found or redacted."
            if r.get("redactions")
            else "Redaction was off."
        )
    )
    dist = r.get("label_distribution") or {}
    if dist and r.get("labels"):
        splits = list(dist)
        body += "<h3>Labels</h3>" + table(
            ["label", *splits],
            [[lab, *[dist[s].get(lab, 0) for s in splits]] for lab in r["labels"]],
        )
    if r.get("warnings"):
        body += (
            "<h3>Warnings</h3><ul>" + "".join(f"<li>{esc(w)}</li>" for w in r["warnings"]) + "</ul>"
        )
    return section("data", "Data", body)


def qa_predictions(f: Folder) -> str:
    """A sample of predictions.json (extractive QA: question id -> answer)."""
    p = f.qa_predictions
    items = (
        list(p.items())
        if isinstance(p, dict)
        else list(enumerate(p))
        if isinstance(p, list)
        else []
    )
    if not items:
        return ""
    body = para(
        f"{len(items)} predictions in predictions.json; the first {min(len(items), 15)}:", "muted"
    )
    return section(
        "predictions", "Predictions", body + table(["id", "prediction"], items[:15], "errors")
    )


def other(f: Folder) -> str:
    """Keys of eval.json no other section shows (rendered generically)."""
    shown = set(scalar_metrics(f.eval)) | {"details", "model", "data", "rows", "rejected", "split"}
    rest = {k: v for k, v in f.eval.items() if k not in shown}
    return section("other", "Other results", kv_table(rest)) if rest else ""


def config(f: Folder) -> str:
    """The resolved run config, folded."""
    if not f.config:
        return ""
    import yaml

    text = yaml.safe_dump(f.config, sort_keys=False, allow_unicode=True)
    return section(
        "config",
        "Config",
        f"<details><summary>config.yaml</summary><pre>{esc(text)}</pre></details>",
    )
