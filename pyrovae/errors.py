"""Errors a user can act on.

Every error pyrovae raises for bad input is a :class:`PyrovaeError`: its message is one line
that names the file, key or value at fault and says what is allowed. The CLI prints it on
stderr and exits with status 2; the Python API lets it propagate.
"""


class PyrovaeError(Exception):
    """Base class for errors caused by the user's input (config, data, run folder)."""


class ConfigError(PyrovaeError, ValueError):
    """A config file, key or value is malformed, unknown or out of range."""


class DataError(PyrovaeError, ValueError):
    """A data set is missing, malformed, or does not fit the chosen likelihood."""


class RunDirError(PyrovaeError):
    """A run folder or checkpoint is missing, foreign, incompatible or would be overwritten."""
