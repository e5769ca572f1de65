"""Whether a path can be written, asked before any work: the nearest folder that exists on the way must be
a folder (not a file) the user may write in. The caller names the option the path came from."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def check_writable(path: Path, what: str, fix: str) -> None:
    """Refuse ``path`` (a folder or file to be made, with any missing folders above it) when it cannot be:
    ``what`` names it in the message ("--out model"), ``fix`` says what to do instead."""
    path = Path(os.path.abspath(path))
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder == path and path.is_dir():
        pass
    elif not folder.is_dir():
        raise UserError(f"{what} cannot be made: {folder} is a file, not a folder. {fix}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} cannot be written: {folder} is not writable (read-only, or owned by another user). {fix}")
