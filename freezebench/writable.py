"""Writing outputs safely: whether a path can be written, asked before any work (the nearest folder that
exists on the way must be a folder, not a file, the user may write in; the caller names the option the path
came from), and a file written whole or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import UserError


def check_writable(path: Path, what: str, fix: str) -> None:
    """Refuse ``path`` (a folder to be made, with any missing folders above it, or one that exists) when it
    cannot be: ``what`` names it in the message ("--out model"), ``fix`` says what to do instead."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{what} cannot be made: {folder} is a file, not a folder. {fix}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} cannot be written: {folder} is not writable (read-only, or owned by another user). {fix}")


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary path of this process's own to write ``path``'s content to; renamed into place when the
    block ends, removed when it fails. What a killed writer left is swept first (``sweep_orphans``)."""
    from .imagefiles import sweep_orphans

    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
