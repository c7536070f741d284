"""Writes docs/config.md from the code: every config key with its default and comment, and
every registered part with its options. tests/test_docs.py checks that the page is current.

    python docs/config_reference.py > docs/config.md
"""

import dataclasses
import inspect
import re
import sys
from pathlib import Path

from pyrovae import (
    ALGORITHMS,
    CLASSIFIERS,
    DATASETS,
    DECODERS,
    ENCODERS,
    ESTIMATORS,
    LIKELIHOODS,
    MODELS,
    OPTIMIZERS,
    POSTERIORS,
    PRIORS,
)
from pyrovae.app.config import SECTIONS, Config, ModelConfig
from pyrovae.registry import _type_name
from pyrovae.training.schedules import SCHEDULES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sphinx_roles import markdown  # noqa: E402 (beside this file: docstrings' Sphinx roles as inline code)


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


def param_docs(cls):
    """``:param type name: text`` lines of a class's docstring, by name."""
    docs, text = {}, inspect.getdoc(cls) or ""
    for m in re.finditer(r":param (?:\w+ )?(\w+): (.*?)(?=\n\s*:param|\n\n|$)", text, re.S):
        docs[m.group(1)] = " ".join(m.group(2).split())
    return docs


def cell(text: str) -> str:
    """Text for a table cell: Sphinx roles as inline code, a ``|`` escaped (so that it does not end the cell)."""
    return markdown(text).replace("|", "\\|")


def default_text(value):
    if value is inspect.Parameter.empty:
        return "required"
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
        doc = " ".join(line.strip() for line in (cls.__doc__ or "").strip().split("\n\n")[0].splitlines())
        out += [f"## [{section}]", "", markdown(doc), "", "| key | default | meaning |", "| --- | --- | --- |"]
        if cls is ModelConfig:
            out.append("| `family` | `\"vae\"` | the model family, by name (below); the other keys are its options |")
            for key, value in ModelConfig().defaults().items():
                out.append(f"| `{key}` | {default_text(value)} | {cell(param_docs(MODELS.get('vae')).get(key, ''))} |")
            out.append("")
            continue
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name == "options":  # not a key: the table's other keys
                out.append("| (any other key) | | an option of the data set's source (below), checked against it |")
                continue
            out.append(f"| `{f.name}` | {default_text(getattr(getattr(defaults, section), f.name))} | "
                       f"{cell(comments.get(f.name, ''))} |")
        out.append("")
    out += ["## [optim]", "", "An optimizer spec: `name` and that optimizer's options (defaults below), and "
            "`schedule`, the learning-rate schedule (below; default `\"constant\"`).", ""]
    registries = [("optimizers (`[optim] name`)", OPTIMIZERS),
                  ("learning-rate schedules (`optim.schedule`)", SCHEDULES), ("data sets (`data.name`)", DATASETS),
                  ("model families (`model.family`)", MODELS), ("algorithms (`train.algorithm`)", ALGORITHMS),
                  ("estimators (`train.estimator`)", ESTIMATORS), ("priors (`model.prior`)", PRIORS),
                  ("likelihoods (`model.likelihood`)", LIKELIHOODS), ("encoders (`model.encoder`)", ENCODERS),
                  ("decoders (`model.decoder`)", DECODERS), ("posteriors (`model.posterior`)", POSTERIORS),
                  ("classifiers (`model.classifier`, for `m2`)", CLASSIFIERS)]
    for title, registry in registries:
        if registry is not OPTIMIZERS:
            out += [f"## {title[0].upper() + title[1:]}", "",
                    "A name; its options are the `[data]` table's keys." if registry is DATASETS else
                    "A name." if registry in (MODELS, ESTIMATORS) else
                    "A name, or a table `{ name = ..., option = value }` (mcem's options)." if registry is ALGORITHMS
                    else
                    "A name, or a table `{ name = ..., option = value }`.", ""]
        out += ["| name | options (default) | what it is |", "| --- | --- | --- |"]
        for name in registry.names():
            entry = registry.get(name)
            options = ", ".join(f"`{k}` = {default_text(p.default)} ({_type_name(p.annotation)})"
                                for k, p in registry.options(name).items())
            summary = (inspect.getdoc(entry) or "").split("\n\n")[0].replace("\n", " ")
            out.append(f"| `{name}` | {options or 'none'} | {cell(summary)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
