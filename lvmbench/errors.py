"""The user-facing error type, at the bottom of the package: it imports nothing of lvmbench."""


class LvmbenchError(Exception):
    """A user-facing error: its message is one line and needs no traceback."""
