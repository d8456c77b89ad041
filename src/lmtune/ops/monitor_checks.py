"""The checks `lmtune monitor status` and its report run on a model's history: its metric
against release time and the previous labelled batch, input drift (token-length PSI and KS,
OOV and unknown-token rates, label and prediction PSI), and the release's age.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from lmtune.config import MonitorConfig

if TYPE_CHECKING:  # monitor.py imports this module; Target is only an annotation here
    from lmtune.ops.monitor import Target


@dataclass
class Check:
    """One check's outcome: status is OK, ALERT or n/a (nothing to check yet)."""

    name: str
    status: str
    value: float | None
    threshold: float | None
    detail: str


def _limit_check(name: str, value: float | None, limit: float, detail: str) -> Check:
    if value is None:
        return Check(name, "n/a", None, limit, detail)
    return Check(name, "ALERT" if value > limit else "OK", value, limit, detail)


def _metric_checks(mine: list[dict], target: Target, th: MonitorConfig) -> list[Check]:
    labelled = [r for r in mine if th.metric in r["metrics"]]
    sign = 1.0 if th.mode == "max" else -1.0  # "worse by" is positive for a drop in a max metric
    if not labelled:
        na = f"no labelled batch with {th.metric} for this version yet (record one with --data)"
        return [
            Check("metric_vs_release", "n/a", None, th.max_metric_drop, na),
            Check("metric_vs_previous", "n/a", None, th.max_metric_drop, na),
        ]
    cur = labelled[-1]["metrics"][th.metric]
    rel = target.release_metrics.get(th.metric)
    out = [
        _limit_check(
            "metric_vs_release",
            None if rel is None else sign * (rel - cur),
            th.max_metric_drop,
            f"{th.metric} {cur:.4f} in '{labelled[-1]['batch']}' vs {rel:.4f} at release"
            if rel is not None
            else f"no release-time {th.metric} found (metrics.json or the run's eval.json)",
        )
    ]
    if len(labelled) < 2:
        out.append(
            Check(
                "metric_vs_previous",
                "n/a",
                None,
                th.max_metric_drop,
                "only one labelled batch so far",
            )
        )
    else:
        prev = labelled[-2]["metrics"][th.metric]
        out.append(
            _limit_check(
                "metric_vs_previous",
                sign * (prev - cur),
                th.max_metric_drop,
                f"{th.metric} {cur:.4f} vs {prev:.4f} in '{labelled[-2]['batch']}'",
            )
        )
    return out


def _drift_checks(latest: dict | None, th: MonitorConfig) -> list[Check]:
    drift = (latest or {}).get("drift") or {}
    if "length_psi" not in drift:
        why = drift.get("note") or "no batch recorded for this version yet"
        return [Check("input_drift", "n/a", None, None, why)]
    where = f"batch '{latest['batch']}'"
    ks = drift["length_ks"]
    out = [
        _limit_check(
            "length_psi", drift["length_psi"], th.psi_threshold, f"token-length PSI, {where}"
        )
    ]
    ks_alert = th.ks_pvalue > 0 and ks["pvalue"] < th.ks_pvalue
    out.append(
        Check(
            "length_ks",
            "ALERT" if ks_alert else "OK",
            ks["pvalue"],
            th.ks_pvalue,
            f"KS D={ks['statistic']:.3f} (n={ks['n']}, m={ks['m']}); alerts when p < threshold",
        )
    )
    for key, ref in (("oov", "out-of-vocabulary word"), ("unk", "unknown-token")):
        out.append(
            _limit_check(
                f"{key}_increase",
                drift[f"{key}_increase"],
                th.max_oov_increase,
                f"{ref} rate {drift[f'{key}_rate']:.4f} vs {drift[f'{key}_reference']:.4f} in training",
            )
        )
    for key in ("label_psi", "prediction_psi"):
        if key in drift:
            out.append(
                _limit_check(key, drift[key], th.psi_threshold, f"vs training labels, {where}")
            )
    return out


def run_checks(
    records: list[dict], target: Target, th: MonitorConfig, now: datetime
) -> list[Check]:
    """Every check on the current version's latest records, plus the release age."""
    mine = [r for r in records if r["model_version"] == target.version]
    checks = _metric_checks(mine, target, th) + _drift_checks(mine[-1] if mine else None, th)
    days = (now - target.release_time).total_seconds() / 86400
    limit = th.max_days_since_release
    detail = f"released {target.release_time:%Y-%m-%d %H:%M} UTC ({target.release_time_source})"
    checks.append(
        Check("days_since_release", "n/a", days, None, detail + "; no limit set")
        if limit is None
        else _limit_check("days_since_release", days, limit, detail)
    )
    return checks
