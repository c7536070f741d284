"""Writes docs/config.md from the code: every config key with its default and comment, and
every registered part with its options. tests/test_docs.py checks that the page is current.

    python docs/config_reference.py > docs/config.md
"""

import dataclasses
import inspect
import re

from pyrovae import DECODERS, ENCODERS, LIKELIHOODS, OPTIMIZERS, PRIORS
from pyrovae.config import SECTIONS, Config
from pyrovae.registry import _type_name


def field_comments(cls):
    """``#:`` comments above each field of a dataclass, by field name."""
    comments, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        line = line.strip()
        if line.startswith("#:"):
            pending.append(line[2:].strip())
        elif (m := re.match(r"(\w+):", line)) and pending is not None:
            if pending:
                comments[m.group(1)] = " ".join(pending)
            pending = []
        else:
            pending = []
    return comments


def default_text(value):
    if isinstance(value, str):
        return f'`"{value}"`'
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(default_text(v).strip("`") for v in value) + "]`"
    if isinstance(value, dict):
        return "`{ " + ", ".join(f"{k} = {default_text(v).strip('`')}" for k, v in value.items()) + " }`"
    return f"`{value}`"


def render() -> str:
    out = ["# Config reference", "",
           "Generated from the code by `python docs/config_reference.py > docs/config.md`. A config is a TOML",
           "file; every key is optional; `--set section.key=value` overrides any of them.", ""]
    defaults = Config()
    for section, cls in SECTIONS.items():
        out += [f"## [{section}]", "", (cls.__doc__ or "").strip(), "", "| key | default | meaning |",
                "| --- | --- | --- |"]
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            out.append(f"| `{f.name}` | {default_text(getattr(getattr(defaults, section), f.name))} | "
                       f"{comments.get(f.name, '')} |")
        out.append("")
    out += ["## [optim]", "", "An optimizer spec: `name` and that optimizer's options (defaults below).", ""]
    registries = [("optimizers (`[optim] name`)", OPTIMIZERS), ("priors (`model.prior`)", PRIORS),
                  ("likelihoods (`model.likelihood`)", LIKELIHOODS), ("encoders (`model.encoder`)", ENCODERS),
                  ("decoders (`model.decoder`)", DECODERS)]
    for title, registry in registries:
        if registry is not OPTIMIZERS:
            out += [f"## {title[0].upper() + title[1:]}", "",
                    "A name, or a table `{ name = ..., option = value }`.", ""]
        out += ["| name | options (default) | what it is |", "| --- | --- | --- |"]
        for name in registry.names():
            entry = registry.get(name)
            options = ", ".join(f"`{k}` = {default_text(p.default)} ({_type_name(p.annotation)})"
                                for k, p in registry.options(name).items())
            summary = (inspect.getdoc(entry) or "").split("\n\n")[0].replace("\n", " ")
            out.append(f"| `{name}` | {options or 'none'} | {summary} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
