"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class UserError(Exception):
    """A mistake the user can fix: bad config, unknown name, missing file."""

    exit_code = 2


class PluginError(UserError):
    """A plugin misbehaved: failed to import, registered a duplicate name, ..."""
