"""Small file-system helpers shared by the agent's state files.

`write_atomic` is the one way the agent replaces a file: readers see the old content or the new one,
never a torn mix, even across a power cut. Hand-written (a dozen lines) because the atomic-write
packages on PyPI either skip the directory fsync or pull in more than this needs.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Replace `path` with `data`: a temporary file in the same directory, fsync, rename, fsync the directory.

    mode: the new file's permission bits (before the umask), set at creation so a secret is never readable
    by others even for a moment; None keeps the default 0o666 & ~umask. durable=False skips both fsyncs:
    the rename is still atomic, but after a power cut the file may hold the previous content (for status
    files written often, where wearing the SD card costs more than losing the last write).
    Raises OSError (the temporary file is removed first).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a leftover from a power cut; O_EXCL below would refuse it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
