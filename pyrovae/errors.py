"""Errors a user can act on.

Every error pyrovae raises for bad input is a :class:`PyrovaeError`: its message is one line
that names the file, key or value at fault and says what is allowed. The CLI prints it on
stderr and exits with status 2; the Python API lets it propagate. Values echoed in a message
go through :func:`shown`, so a hostile or huge value never floods the terminal.
"""

import re

#: the longest echo of a value in a message, in characters
SHOWN_LIMIT = 80


def shown(value, limit: int = SHOWN_LIMIT) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = _safe_repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_repr(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"<an integer of {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        return repr(value)
    except Exception:  # a repr that fails, or recurses too deeply
        return f"<{type(value).__name__}>"


def needed_object(error: BaseException):
    """The Python object a ``torch.load(..., weights_only=True)`` refused to unpickle (None for other errors)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def one_line(message: str, limit: int = 2000) -> str:
    """A message as one line of at most ``limit`` characters (the CLI's last guard)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PyrovaeError(Exception):
    """Base class for errors caused by the user's input (config, data, run folder)."""


class ConfigError(PyrovaeError, ValueError):
    """A config file, key or value is malformed, unknown or out of range."""


class DataError(PyrovaeError, ValueError):
    """A data set is missing, malformed, or does not fit the chosen likelihood."""


class RunDirError(PyrovaeError):
    """A run folder or checkpoint is missing, foreign, incompatible, locked by another writer,
    or cannot be written."""
