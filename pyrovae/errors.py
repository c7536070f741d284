"""Errors a user can act on.

Every error pyrovae raises for bad input is a :class:`PyrovaeError`: its message is one line
that names the file, key or value at fault and says what is allowed. The CLI prints it on
stderr and exits with status 2; the Python API lets it propagate. Values echoed in a message
go through :func:`shown`, so a hostile or huge value never floods the terminal.
"""

import difflib
import os
import re

#: the longest echo of a value in a message, in characters
SHOWN_LIMIT = 80


def shown(value, limit: int = SHOWN_LIMIT) -> str:
    """``repr(value)`` on one line, printable, cut to ``limit`` characters with an ellipsis in the
    middle (a long path keeps its file name)."""
    text = printable(_safe_repr(value))
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (escapes, control and format
    characters such as ESC or a right-to-left override) written as ``\\x1b``, ``\\u202e``: a
    message can name a hostile key without setting the terminal's title or clearing its screen."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else
                                                 f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
                   for ch in text)


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
    """A message as one printable line of at most ``limit`` characters (the CLI's last guard):
    white space folded to single spaces, other control characters escaped (:func:`printable`);
    the table of a program's sites that Pyro appends to an error raised inside it is left out."""
    message = str(message)
    table = message.find("\n Trace Shapes:")
    if table < 0:
        table = message.find("\nTrace Shapes:")
    text = printable(" ".join((message if table < 0 else message[:table]).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shell_word(text) -> str:
    """``text`` as one word typed in a POSIX shell (quoted where it must be), for the commands a
    message tells the user to run."""
    text = printable(str(text))
    return text if text and re.fullmatch(r"[\w./@%+=:,-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def as_typed(command: str) -> str:
    """A ``pyrovae ...`` command a message tells the user to run, as they invoke the command line:
    ``$PYROVAE_CLI`` in place of ``pyrovae`` (``./dev`` sets it to ``./dev pyrovae``)."""
    program = os.environ.get("PYROVAE_CLI", "pyrovae")
    return program + command[len("pyrovae"):] if command.startswith("pyrovae ") else command


def counted(n, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def did_you_mean(name, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``name``, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class PyrovaeError(Exception):
    """Base class for errors caused by the user's input (config, data, run folder)."""


class ConfigError(PyrovaeError, ValueError):
    """A config file, key or value is malformed, unknown or out of range."""


class UnknownNameError(ConfigError):
    """A config names a part, family or other registered entry that no registry holds (a
    plugin that registers it may not have been named)."""


class DataError(PyrovaeError, ValueError):
    """A data set is missing, malformed, or does not fit the chosen likelihood."""


class RunDirError(PyrovaeError):
    """A run folder or checkpoint is missing, foreign, incompatible, locked by another writer,
    or cannot be written."""


class TrackingError(PyrovaeError):
    """An experiment tracker (MLflow) failed: its message names the store, what failed and what
    was kept."""
