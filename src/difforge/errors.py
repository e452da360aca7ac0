"""Errors difforge raises for bad input: the entry points print them as one line and exit 1; and
the category of difforge's own warnings."""


class DifforgeError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""


class CheckpointError(DifforgeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, unsafe or incompatible."""


class DataError(DifforgeError):
    """Data that cannot be used: missing, empty, unreadable or of the wrong shape."""


class DifforgeWarning(UserWarning):
    """A warning of difforge's own (a setting that works but may not do what was meant): the
    entry points show it on global rank 0 only."""
