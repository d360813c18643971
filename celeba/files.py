"""Writing files so that an interruption (SIGKILL, a full disk) never leaves half of one where a reader looks."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


def _tmp_name(path: Path) -> Path:
    """`.name.tmp<suffixes>` beside `path`: Keras picks the format from the suffix, so keep it."""
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    return path.with_name(f".{path.name.removesuffix(suffix)}.tmp{suffix}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to `path` on success, delete it on any failure.

    An interruption or a full disk never leaves a half-written `path`, nor a stray temporary file
    (a SIGKILL can still leave the temporary one: `remove_stale_temporaries` clears those).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write() names no file: say which one
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, stem: str = "*") -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` for files named `stem.*` (not recursive)."""
    stale = [p for p in Path(folder).glob(f".{stem}.tmp*") if p.is_file()] if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class DiskFullError(OSError):
    """No space left while writing `path`; `kept` says what is still there and what to do (the CLI's one line)."""

    def __init__(self, path: str | os.PathLike[str], kept: str) -> None:
        super().__init__(errno.ENOSPC, "no space left on device", os.fspath(path))
        self.kept = kept
