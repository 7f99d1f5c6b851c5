"""The one way the job writes a file: atomically.

``atomic_write(path, fill)`` writes into a temporary file with a unique name in the
target's own folder (so that two processes never share one), flushes and fsyncs it,
then renames it over ``path`` (``os.replace``: readers see the old file or the new one,
never a half-written one). On any error, a ``KeyboardInterrupt`` included, the
temporary file is removed and a :class:`WriteError` naming the path is raised; the
target is untouched. A process killed by SIGKILL can leave a temporary file behind:
its name matches :data:`TEMP_PATTERN`, and the job sweeps such files from the folders
it owns (under its lock) with :func:`remove_stale_temporaries`.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import IO, Callable, Union

TEMP_SUFFIX = ".tmp"
# tempfile.mkstemp names: "." + target name + "." + 8 random characters + ".tmp"
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; outputs get the usual 0o666 & ~umask
_FILE_MODE = 0o666 & ~_umask()


class WriteError(OSError):
    """An output file could not be written (disk full, permission, quota...)."""

    def __init__(self, path: Union[str, Path], error: BaseException):
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        super().__init__(getattr(error, "errno", None), f"cannot write {os.fsdecode(path)}: {reason}")
        self.path = Path(path)

    def __str__(self) -> str:  # one line, without OSError's "[Errno N]" prefix
        return self.args[1]


def atomic_write(path: Union[str, Path], fill: Callable[[IO[bytes]], None]) -> Path:
    """Create or replace `path` with what `fill(fh)` writes into a binary file object."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, _FILE_MODE)
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e) from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def remove_stale_temporaries(folder: Union[str, Path]) -> int:
    """Delete temporary files that :func:`atomic_write` left in `folder` (not recursive)
    when its process was killed. Call only while no other writer uses the folder."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if TEMP_PATTERN.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed
