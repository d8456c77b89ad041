"""Write files and folders so that nobody ever reads them half-written.

A reader (serve, monitor, a resumed run) sees either the old version or the new one: the new
one is built under a temporary name beside the target and renamed into place, and a rename
within one folder is atomic on POSIX filesystems. A crash leaves at most a hidden `.NAME.tmp-*`
sibling, which nothing picks up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from lmtune.errors import UserError


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final` whole.

    If the body raises, the temporary folder is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    try:
        tmp.mkdir()
    except OSError as exc:
        _raise_if_disk_full(exc, final)
        raise
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space the half copy took
        _raise_if_disk_full(exc, final)
        raise
    _honour_umask(tmp)
    # A non-empty folder cannot be renamed over, so the old one is moved aside first.
    old = final.parent / f".{final.name}.old-{tag}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary sibling and one rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        _raise_if_disk_full(exc, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


# How libraries report a full disk when they do not pass the OSError on: torch's zip writer
# ("unexpected pos", "file write failed") and safetensors (Rust io errors, os error 28).
_FULL_MESSAGES = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")
_WRITER_MESSAGES = ("unexpected pos", "file write failed")


def is_disk_full(exc: BaseException, where: Path | None = None) -> bool:
    """True when exc (or an exception it was raised from) says the disk or quota is full.

    The torch writer's messages are ambiguous, so they count only when `where` has less
    than 1 MiB free.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        msg = str(e).lower()
        if any(m in msg for m in _FULL_MESSAGES):
            return True
        if where is not None and any(m in msg for m in _WRITER_MESSAGES):
            return _free_bytes(where) < 2**20
        e = e.__cause__ or e.__context__
    return False


def _free_bytes(path: Path) -> int:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return 1 << 62


def _raise_if_disk_full(exc: BaseException, path: Path) -> None:
    if is_disk_full(exc, path.parent):
        raise UserError(
            f"disk full while writing {path}: free some space on that disk (or point "
            "run.output_dir elsewhere) and run again; nothing half-written was kept, and a "
            "training run continues from its last checkpoint with --resume"
        ) from exc


def _honour_umask(folder: Path) -> None:
    """Give files the mode the umask allows: some writers create them through temporary
    files (mode 0600), which makes weights unreadable to everyone else on a shared disk."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in files:
            p = Path(root, name)
            if not p.is_symlink():
                os.chmod(p, 0o666 & ~mask)
        for name in dirs:
            os.chmod(Path(root, name), 0o777 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask
