"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class UserError(Exception):
    """A mistake the user can fix: bad config, unknown name, missing file."""

    exit_code = 2


class PluginError(UserError):
    """A plugin misbehaved: failed to import, registered a duplicate name, ..."""


class StoreFault(UserError):
    """The machine refused a write (a full disk, a read-only or unwritable folder): nothing is wrong with
    the input, and the same command resumes once the cause is fixed."""

    exit_code = 1


_FAULTS = {28: "the disk is full (no space left on device)", 122: "the disk quota is exceeded",
           30: "the file system is read-only", 13: "permission denied", 27: "a file grew past the size limit"}
_SQLITE_FAULTS = {"database or disk is full": _FAULTS[28], "attempt to write a readonly database": "the database file is read-only",
                  "disk i/o error": "a disk I/O error"}


def fault_of(exc: BaseException) -> str | None:
    """What the machine refused, if ``exc`` (or an exception it was raised from) is a write the disk,
    the file system or the permissions refused; None for anything else (a bug: let it show)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FAULTS:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            return f"{_FAULTS[exc.errno]}{where}"
        text = str(exc).lower()
        for marker, what in _SQLITE_FAULTS.items():
            if marker in text:
                return what
        exc = exc.__cause__ or exc.__context__
    return None
