"""``--set section.key=value``: a config's keys overridden from the command line (``model.prior.num_components=5``
reaches into a part's options; a part given by name gains options)."""

from typing import Any, Dict, List

from pyrovae.app.config import ModelConfig
from pyrovae.app.tomlfile import parse_toml
from pyrovae.errors import ConfigError, shown


def parse_override(text: str):
    """``section.key=value`` -> (["section", "key"], value); the value is read as TOML, else a string."""
    if "=" not in text:
        raise ConfigError(f"--set {shown(text)}: expected section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {shown(text)}: expected section.key=value, e.g. train.epochs=3")
    try:
        value = parse_toml(f"v = {raw.strip()}", "--set")["v"]
    except ConfigError:
        value = raw.strip()
    return path, value


def apply_overrides(d: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Apply ``--set`` overrides to a parsed config dict (in place) and return it."""
    for text in overrides or []:
        path, value = parse_override(text)
        set_key(d, path, value, f"--set {shown(text)}")
    return d


def set_key(d: Dict[str, Any], path: List[str], value, where: str) -> None:
    """Set ``section.key[.option...]`` in a parsed config dict (in place), as ``--set`` does: a part
    given by name gains options (``prior = "x"`` becomes ``{ name = "x", ... }``), a part left out
    starts from its family's default. ``where`` names the setting in an error (``--set ...``)."""
    node = d
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if isinstance(child, str) and i >= 1:  # a part given by name gains options: prior="x" -> {name="x"}
            child = {"name": child}
        elif child is None and i >= 1 and path[0] == "model":  # a part's default, of the family chosen
            family = d.get("model", {}).get("family", "vae")
            child = ModelConfig(family).defaults().get(part) if isinstance(family, str) else None
            child = {"name": child} if isinstance(child, str) else dict(child or {})
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(path[:i + 1])} is not a table")
        node[part] = child
        node = child
    node[path[-1]] = value
