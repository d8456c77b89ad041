"""atomic_dir / atomic_write_text: readers see the old or the new version, never a half one."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lmtune.atomic import atomic_dir, atomic_write_text, is_disk_full
from lmtune.errors import UserError
from lmtune.train.state import TrainState


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


def test_disk_full_in_atomic_dir_is_a_user_error_and_keeps_old(tmp_path: Path) -> None:
    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "a.txt").write_text("old")
    with pytest.raises(UserError, match=r"disk full while writing .*checkpoint.*--resume"):
        with atomic_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (final / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # no temp folder left


def test_disk_full_in_atomic_write_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, *a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match=r"disk full while writing .*current"):
        atomic_write_text(tmp_path / "current", "v")


def test_torch_writer_error_counts_as_full_only_when_the_disk_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
    assert not is_disk_full(err, tmp_path)
    monkeypatch.setattr("lmtune.atomic._free_bytes", lambda p: 4096)
    assert is_disk_full(err, tmp_path)
    safetensors_err = Exception("Error while serializing: I/O error: No space left on device")
    assert is_disk_full(safetensors_err)


def test_atomic_dir_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            fd = os.open(tmp / "model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)  # what safetensors does (a private temporary file renamed)
            (tmp / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model" / "sub").stat().st_mode) == 0o755


@pytest.mark.parametrize("how", ["ENOSPC", "torch-writer"])
def test_disk_full_while_checkpointing_leaves_the_run_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    import torch

    from lmtune.train import checkpoint as ck

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    root = tmp_path / "checkpoints"
    ck.save_checkpoint(root, 1, model, opt, sched, TrainState(step=1), keep_last=2)

    def full(*args: object, **kwargs: object) -> None:
        if how == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ck.torch, "save", full)
    monkeypatch.setattr("lmtune.atomic._free_bytes", lambda p: 0)
    with pytest.raises(UserError, match=r"disk full while writing .*step-0000002.*--resume"):
        ck.save_checkpoint(root, 2, model, opt, sched, TrainState(step=2), keep_last=2)
    assert [p.name for p in ck.list_checkpoints(root)] == ["step-0000001"]
    assert sorted(p.name for p in root.iterdir()) == ["step-0000001"]  # no half checkpoint
