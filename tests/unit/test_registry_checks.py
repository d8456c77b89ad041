"""The registry's `current` pointer is followed only into the registry's own versions; a
pipeline checks the registry before training; `lmtune registry release RUN` releases a
finished, gated run without retraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_registry import _model, _release

from lmtune.config import Config
from lmtune.errors import UserError
from lmtune.ops import pipeline
from lmtune.ops import registry as reg
from lmtune.ops.serve_engine import resolve_serve_dir
from runkit import cli_exit


@pytest.mark.parametrize("kind", ["text", "symlink"])
def test_current_outside_the_registry_is_refused(tmp_path: Path, kind: str) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)
    outside = tmp_path / "run1"
    outside.mkdir()
    (outside / "lmtune_model.json").write_text("{}")
    for target in ("../run1", str(outside)):
        (r / "current").unlink()
        if kind == "symlink":
            (r / "current").symlink_to(target)
        else:
            (r / "current").write_text(target + "\n")
        with pytest.raises(UserError, match="not a version of this registry"):
            reg.read_current(r)
        with pytest.raises(UserError, match="not a version of this registry"):
            resolve_serve_dir(r)
        assert "registry rollback" in (reg.pointer_problem(r) or "")
        assert [x["current"] for x in reg.version_rows(r)] == [False]
    (r / "current").unlink()
    (r / "current").write_text("")
    with pytest.raises(UserError, match="is empty"):
        resolve_serve_dir(r / "current")


def test_registry_list_warns_about_a_bad_pointer(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)
    (r / "current").write_text("../elsewhere\n")
    assert cli_exit("registry", "list", str(r)) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "warning:" in out and "'../elsewhere'" in out


def _cfg(tmp_path: Path, registry: Path) -> Config:
    return Config.model_validate(
        {
            "task": "classification",
            "run": {"output_dir": str(tmp_path / "run")},
            "data": {"train": "t.jsonl", "split": {"test": 0.2}},
            "gate": {"registry": str(registry), "threshold": 0.5, "metric": "accuracy"},
        }
    )


def test_pipeline_checks_the_registry_before_training(tmp_path: Path) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)
    with (r / "releases.jsonl").open("a") as f:
        f.write("{half a line\n")
    with pytest.raises(UserError, match="releases.jsonl line 2 is not valid JSON"):
        pipeline.preflight(_cfg(tmp_path, r))
    (r / "releases.jsonl").write_text("")
    (r / "current").write_text("/abs/v1\n")
    with pytest.raises(UserError, match="not a version of this registry"):
        pipeline.preflight(_cfg(tmp_path, r))


def _gated_run(tmp_path: Path, registry: Path, passed: bool = True) -> Path:
    """A finished pipeline run as run_pipeline leaves it when the release was lost."""
    cfg = _cfg(tmp_path, registry)
    run = Path(cfg.run.output_dir)
    run.mkdir()
    _model(tmp_path, "run").rename(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (run / "summary.json").write_text(json.dumps({"test": {"accuracy": 0.9}}))
    decision = {"metric": "accuracy", "mode": "max", "value": 0.9, "passed": passed}
    (run / "gate.json").write_text(json.dumps({**decision, "checks": [], "released": None}))
    return run


def test_registry_release_releases_a_gated_run_without_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)
    run = _gated_run(tmp_path, r)
    assert cli_exit("registry", "release", str(run)) == 0
    assert "released v2" in capsys.readouterr().out
    assert reg.read_current(r) == "v2" and (r / "v2" / "model.safetensors").is_file()
    assert reg.read_metrics(r / "v2")["value"] == 0.9
    gate = json.loads((run / "gate.json").read_text())
    assert gate["passed"] and gate["released"]["version"] == "v2"
    assert cli_exit("registry", "release", str(run)) == 2  # already released
    assert "already released as v2" in capsys.readouterr().err


def test_registry_release_refuses_a_failed_gate(tmp_path: Path) -> None:
    r = tmp_path / "registry"
    run = _gated_run(tmp_path, r, passed=False)
    result = pipeline.release_run(run)
    assert not result["released"] and "gate refused" in result["reason"]
    assert cli_exit("registry", "release", str(run)) == 3
    assert not r.exists()
