"""atomic_dir / atomic_write_text: readers see the old or the new version, never a half one."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.atomic import atomic_dir, atomic_write_text


def test_atomic_dir_creates_and_replaces_whole(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "model"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp.is_dir() and not final.exists()
        (tmp / "a.txt").write_text("v1")
    assert (final / "a.txt").read_text() == "v1"
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("v2")
        assert (final / "a.txt").read_text() == "v1"  # the old version stays readable meanwhile
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in final.parent.iterdir()) == ["model"]  # no temp or old left


def test_atomic_dir_failure_keeps_old_version(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (final / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_write_text_replaces_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "current"
    atomic_write_text(path, "v1\n")
    atomic_write_text(path, "v2\n")
    assert path.read_text(encoding="utf-8") == "v2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["current"]


def test_atomic_write_text_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "current"
    path.write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("lmtune.atomic.os.replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["current"]
