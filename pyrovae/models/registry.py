"""Model families by name: ``[model] family = "vae"`` (and a user's own, registered in a plugin).

A family is a :class:`~pyrovae.Model` subclass whose constructor takes the data's
``event_shape`` (and ``num_classes``, if it asks for it: then it comes from the data's labels)
and its own options, which the ``[model]`` table sets and the registry checks like a part's
(names, types). An option named like a part (``prior``, ``likelihood``, ``encoder``,
``decoder``, ``posterior``, ``classifier``, ``encoder2``, ``decoder2``) is a part spec, checked
against that part's registry.
"""

import inspect
from typing import Any, Dict, Mapping, Optional

from pyrovae.errors import ConfigError
from pyrovae.parts.likelihoods import LIKELIHOODS
from pyrovae.parts.nets import CLASSIFIERS, DECODERS, ENCODERS
from pyrovae.parts.posteriors import POSTERIORS
from pyrovae.parts.priors import PRIORS
from pyrovae.registry import Registry

#: what pyrovae passes a family itself; a config may not set these
CONTEXT = ("event_shape", "num_classes", "name")
MODELS = Registry("model family", context=CONTEXT)
"""Model families by name (``model.family``): :class:`~pyrovae.Model` subclasses, built with the
data's ``event_shape`` (and ``num_classes``) and the ``[model]`` table's other keys as options;
``@MODELS.register("mine")`` adds one (``docs/write-your-own.md``).
"""
PART_REGISTRIES = {"prior": PRIORS, "likelihood": LIKELIHOODS, "encoder": ENCODERS, "decoder": DECODERS,
                   "posterior": POSTERIORS, "classifier": CLASSIFIERS,
                   # the hvae family's second layer: networks from a vector to a diagonal Gaussian
                   "encoder2": ENCODERS, "decoder2": ENCODERS}


def family_defaults(family: str) -> Dict[str, Any]:
    """The family's options with their defaults (options without a default are left out): the
    constructor's, updated by the class's ``config_defaults`` (fuller part tables for the config)."""
    defaults = {k: p.default for k, p in MODELS.options(family).items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **getattr(MODELS.get(family), "config_defaults", {})}


def labeled_training(family, given, batch_size: int, engine: str = "torch") -> Dict[str, Any]:
    """The ``[train]`` keys a family sets under a label budget that are not among ``given``
    (:meth:`pyrovae.Model.training_under_budget`); none for a family that is not a Model class."""
    if not isinstance(family, str) or family not in MODELS:
        return {}
    entry = MODELS.get(family)
    return entry.training_under_budget(given, batch_size, engine) if hasattr(entry, "training_under_budget") else {}


def labeled_binarize(family) -> Optional[str]:
    """The ``data.binarize`` a family trains with under a label budget in place of a dynamic default
    (:attr:`pyrovae.Model.binarize_under_budget`); None for none or a family that is not a Model class."""
    if not isinstance(family, str) or family not in MODELS:
        return None
    return getattr(MODELS.get(family), "binarize_under_budget", None)


def check_model_options(family: str, options: Mapping[str, Any], where: str = "model") -> None:
    """Check a ``[model]`` table: the family exists, every key is one of its options with the
    right type, and part specs name registered parts with valid options."""
    MODELS.split({"name": family, **options}, where)
    for key, value in options.items():
        registry = PART_REGISTRIES.get(key)
        if registry is not None and isinstance(value, (str, Mapping)):
            registry.split(value, f"{where}.{key}")
    required = [k for k, p in MODELS.options(family).items() if p.default is inspect.Parameter.empty]
    missing = [k for k in required if k not in options]
    if missing:
        raise ConfigError(f"{where}: family {family!r} needs {', '.join(f'model.{k}' for k in missing)}")


def takes_labels(family: str) -> bool:
    """Whether the family's constructor asks for ``num_classes`` (then the data must have labels)."""
    return "num_classes" in inspect.signature(MODELS.get(family)).parameters


def build_family(model_cfg, event_shape, num_classes: Optional[int] = None):
    """The family a ``[model]`` config (``family`` and options) names, built for the data's event
    shape, and its number of classes for a family that takes ``num_classes`` (errors as they come).
    The model records the number of classes as ``num_classes`` whatever the family calls it
    internally (``Model``'s constructor wrapper), so that sampling, the figures and the amortized
    guide give it labels."""
    if takes_labels(model_cfg.family) and num_classes is None:
        raise ConfigError(f"model.family = {model_cfg.family!r} needs labelled data (num_classes), and the data "
                          "have no labels")
    return MODELS.build({"name": model_cfg.family, **model_cfg.options}, "model", event_shape=tuple(event_shape),
                        num_classes=num_classes)
