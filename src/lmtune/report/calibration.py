"""Calibration figures for reports; the computation lives with the metrics in evaluate/."""

from __future__ import annotations

from lmtune.evaluate.calibration import expected_calibration_error, reliability_bins

__all__ = ["expected_calibration_error", "reliability_bins"]
