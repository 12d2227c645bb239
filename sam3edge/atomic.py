"""Atomic writes: a reader (or a crash) sees the old file or directory or the new one, never half.

Standard library only, so the torch-free runtime uses it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, write: Callable, mode: int = 0o644, binary: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, then rename it over ``path``.

    ``mode`` is applied before the rename (``mkstemp`` creates 0600 files, which installed package
    data and shared results must not be).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def written_by_us(marker: str, format_value: str, key: str = "format") -> Callable[[Path], bool]:
    """A ``replace`` check for :func:`atomic_directory`: ``out`` is a directory whose ``marker`` JSON file (a
    regular file, not a link) says ``key: format_value`` (``"format": ...`` for our own formats)."""
    import json

    def check(out: Path) -> bool:
        path = out / marker
        if out.is_symlink() or not out.is_dir() or path.is_symlink() or not path.is_file():
            return False
        try:
            return json.loads(path.read_text(encoding="utf-8")).get(key) == format_value
        except (OSError, ValueError, AttributeError):
            return False

    return check


@contextmanager
def atomic_directory(out: str | Path, replace: Callable[[Path], bool] | None = None,
                     what: str = "directory") -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it becomes ``out``.

    An existing ``out`` is replaced (in two renames) only if ``replace(out)`` says it is ours, checked at the
    rename, not before the work: otherwise :class:`FileExistsError` and ``out`` is left untouched, also when
    another process created it while this one worked. ``replace=None``: never replace. ``what`` names the
    kind of directory in that error. On an exception the temporary directory is removed and ``out`` is left
    as it was. Between the two renames a crash leaves ``.NAME.old`` beside a missing ``out``: the previous
    version, not a torn one.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; some writers create 0600 files: make all readable
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        if out.exists() or out.is_symlink():
            if replace is None:
                raise FileExistsError(f"{out} already exists (it was created while this {what} was written); it was "
                                      "left as it is: choose another output path")
            if not replace(out):
                raise FileExistsError(f"{out} exists and is not a {what} this program wrote; it was left as it is "
                                      "(nothing replaced): choose another output path, or remove it yourself")
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)  # fails if out appeared since (a non-empty directory or a file)
            except OSError as e:
                raise FileExistsError(f"{out} was created by someone else while this {what} was written; it was "
                                      "left as it is: choose another output path") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
