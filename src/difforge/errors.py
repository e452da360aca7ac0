"""Errors difforge raises for bad input: the entry points print them as one line and exit 1."""


class DifforgeError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""


class CheckpointError(DifforgeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, unsafe or incompatible."""


class DataError(DifforgeError):
    """Data that cannot be used: missing, empty, unreadable or of the wrong shape."""
