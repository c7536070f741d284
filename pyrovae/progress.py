"""Progress bars on stderr: tqdm, shown on a terminal only, and never empty there.

A terminal that reports no size (a pseudo-terminal nobody sized: ``script``, some CI runners and
remote shells give 0 columns and 0 lines) makes tqdm draw nothing at all (its bars below the
screen's height are hidden, and the screen has none); such a terminal gets a bar 80 columns
wide on a screen of 24 lines instead.
"""

import os
import sys

from tqdm.auto import tqdm

#: the size of a terminal that reports none: (columns, lines)
DEFAULT_SIZE = (80, 24)


def terminal_size(stream=None) -> tuple:
    """``(columns, lines)`` of the terminal ``stream`` (default stderr) writes to; zeros where it
    reports none or is no terminal."""
    try:
        return tuple(os.get_terminal_size((stream or sys.stderr).fileno()))
    except (AttributeError, ValueError, OSError):
        return (0, 0)


def progress_bar(**options) -> tqdm:
    """A tqdm bar on stderr (``disable=None``: none where stderr is no terminal; ``options`` go to
    tqdm), as wide as the terminal, or :data:`DEFAULT_SIZE` where it reports no size."""
    options.setdefault("file", sys.stderr)
    options.setdefault("disable", None)
    stream = options["file"]
    if _is_terminal(stream) and 0 in terminal_size(stream):
        options.update(dynamic_ncols=False, ncols=options.get("ncols") or DEFAULT_SIZE[0], nrows=DEFAULT_SIZE[1])
    else:  # a sized terminal, or a log file (whole lines, as tqdm writes them)
        options.setdefault("dynamic_ncols", True)
    return tqdm(**options)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
