"""TOML as pyrovae reads and writes it: a config file's text (a special, huge or binary file is
one line), its parse (every failure one line), and the writer of a run's ``config.toml`` (the
standard library only reads TOML)."""

import math
import tomllib
from pathlib import Path
from typing import Any, Dict

from pyrovae.errors import ConfigError, one_line

#: a config file larger than this is refused unread (a config is a few hundred bytes)
MAX_CONFIG_BYTES = 1 << 20


def read_config_text(path) -> str:
    """The text of a config file; a missing, special (a FIFO, a device), huge or binary file is one line."""
    file = Path(path)
    try:
        if not file.exists():
            raise ConfigError(f"{path}: no such config file")
        if not file.is_file():
            raise ConfigError(f"{path}: not a regular file")
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {file.stat().st_size} bytes; a config file is at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        return file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({type(e).__name__}: {one_line(str(e), 100)})") from None


def parse_toml(text: str, where) -> Dict[str, Any]:
    """``tomllib.loads`` whose every failure is one ConfigError line: malformed text, nesting too
    deep for the parser (RecursionError), integers too long to convert (ValueError)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: malformed TOML: {one_line(str(e), 160)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: malformed TOML: nested too deeply") from None
    except (ValueError, MemoryError) as e:
        raise ConfigError(f"{where}: malformed TOML: {one_line(str(e).split(';')[0], 160)}") from None


# -- writing TOML (the standard library only reads it) -------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps(d: Dict[str, Dict[str, Any]]) -> str:
    """A dict of sections as TOML text (tables nested in a section become inline tables)."""
    out = []
    for section, table in d.items():
        out.append(f"[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    return "\n".join(out)
