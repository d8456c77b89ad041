"""The on-disk model registry (ops/registry.py): versions, atomic current, log, rollback, crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.errors import UserError
from lmtune.ops import registry as reg
from lmtune.ops.serve_engine import resolve_serve_dir


def _model(root: Path, tag: str) -> Path:
    """A full-weights model folder as save_model writes it (export copies it as it is)."""
    m = root / f"model-{tag}"
    m.mkdir(parents=True)
    (m / "lmtune_model.json").write_text(
        json.dumps({"task": "classification", "labels": ["a", "b"]})
    )
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(tag.encode() * 64)
    (m / "data_profile.json").write_text('{"format_version": 1}')
    return m


def _run(root: Path, tag: str) -> Path:
    run = root / f"run-{tag}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"run: {{name: {tag}}}\n")
    (run / "report.html").write_text("<html></html>")
    return run


def _release(root: Path, registry: Path, tag: str, acc: float) -> tuple[str, Path]:
    return reg.release(
        registry,
        _model(root, tag),
        _run(root, tag),
        {"metric": "accuracy", "value": acc, "test": {"accuracy": acc}},
        {"run_dir": f"run-{tag}", "metric": "accuracy", "value": acc},
    )


def test_versions_increase_and_each_folder_is_complete(tmp_path: Path) -> None:
    r = tmp_path / "registry"
    assert (
        reg.next_version(r) == "v1" and reg.read_current(r) is None and reg.list_versions(r) == []
    )
    assert _release(tmp_path, r, "a", 0.8) == ("v1", r / "v1")
    assert _release(tmp_path, r, "b", 0.9) == ("v2", r / "v2")
    assert reg.list_versions(r) == ["v1", "v2"] and reg.read_current(r) == "v2"
    assert (r / "current").read_text() == "v2\n"
    v2 = r / "v2"
    names = {p.name for p in v2.iterdir()}
    assert {
        "lmtune_model.json",
        "model.safetensors",
        "config.json",
        "data_profile.json",
        "config.yaml",
        "report.html",
        "metrics.json",
    } <= names
    assert (v2 / "model.safetensors").read_bytes() == b"b" * 64 and "name: b" in (
        v2 / "config.yaml"
    ).read_text()
    metrics = json.loads((v2 / "metrics.json").read_text())
    assert (
        metrics["version"] == "v2"
        and metrics["test"] == {"accuracy": 0.9}
        and metrics["released_at"].endswith("Z")
    )
    assert json.loads((v2 / "lmtune_model.json").read_text())["version"] == "v2"
    assert not [p for p in r.iterdir() if p.name.startswith(".")]  # no temp folders or files left
    log = reg.read_log(r)
    assert [(e["event"], e["version"], e["previous"], e["value"]) for e in log] == [
        ("release", "v1", None, 0.8),
        ("release", "v2", "v1", 0.9),
    ]
    assert reg.current_release(r)["test"]["accuracy"] == 0.9
    assert resolve_serve_dir(r) == (v2, "v2", r)  # what `lmtune serve REGISTRY` loads


def test_crash_between_folder_and_pointer_keeps_the_old_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(reg, "set_current", crash)
    with pytest.raises(KeyboardInterrupt):
        _release(tmp_path, r, "b", 0.9)
    monkeypatch.undo()
    # The new folder is complete but not current; readers still get v1, whole.
    assert (r / "v2" / "metrics.json").is_file() and reg.read_current(r) == "v1"
    assert resolve_serve_dir(r)[1] == "v1" and len(reg.read_log(r)) == 1
    rows = {x["version"]: x for x in reg.version_rows(r)}
    assert rows["v1"]["current"] and not rows["v2"]["current"]
    assert _release(tmp_path, r, "c", 0.85)[0] == "v3"  # the orphan's number is not reused


def test_pointer_update_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)
    _release(tmp_path, r, "b", 0.9)

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(reg.os, "replace", fail)  # the rename that would publish the new pointer
    with pytest.raises(OSError):
        reg.set_current(r, "v1")
    monkeypatch.undo()
    assert (r / "current").read_text() == "v2\n"  # never empty, never half-written


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)
    broken = tmp_path / "broken"
    broken.mkdir()  # no lmtune_model.json: export refuses it
    with pytest.raises(UserError, match="lmtune_model.json"):
        reg.release(r, broken, None, {"metric": "accuracy", "value": 0.9})
    assert reg.list_versions(r) == ["v1"] and reg.read_current(r) == "v1"
    assert not [p for p in r.iterdir() if p.name.startswith(".")]


def test_rollback_and_its_errors(tmp_path: Path) -> None:
    r = tmp_path / "registry"
    for tag, acc in (("a", 0.8), ("b", 0.9), ("c", 0.7)):
        _release(tmp_path, r, tag, acc)
    assert reg.rollback(r, "v2") == "v3"
    assert reg.read_current(r) == "v2" and resolve_serve_dir(r)[1] == "v2"
    last = reg.read_log(r)[-1]
    assert last["event"] == "rollback" and last["version"] == "v2" and last["previous"] == "v3"
    with pytest.raises(UserError, match=r"no version 'v9' \(versions: v1, v2, v3\)"):
        reg.rollback(r, "v9")
    with pytest.raises(UserError, match="does not exist"):
        reg.rollback(tmp_path / "nowhere", "v1")
    # A version number is never reused, even when its folder was deleted by hand.
    import shutil

    shutil.rmtree(r / "v3")
    assert reg.next_version(r) == "v4"


def test_current_may_be_a_symlink_and_bad_pointers_are_named(tmp_path: Path) -> None:
    r = tmp_path / "registry"
    _release(tmp_path, r, "a", 0.8)
    _release(tmp_path, r, "b", 0.9)
    (r / "current").unlink()
    (r / "current").symlink_to("v1")
    assert reg.read_current(r) == "v1"
    reg.set_current(r, "v2")  # replaces the link itself with the text file
    assert not (r / "current").is_symlink() and reg.read_current(r) == "v2"
    (r / "current").write_text("v7\n")
    with pytest.raises(UserError, match="names 'v7'.*registry rollback"):
        reg.read_current(r)
    assert [x["current"] for x in reg.version_rows(r)] == [False, False]  # listing still works
    assert (
        _release(tmp_path, r, "c", 0.5)[0] == "v3" and reg.read_current(r) == "v3"
    )  # a release repairs it
    with (r / "releases.jsonl").open("a") as f:
        f.write("{broken\n")
    with pytest.raises(UserError, match="releases.jsonl line 4"):
        reg.read_log(r)
