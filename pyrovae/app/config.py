"""Run configuration: the config's sections as validated dataclasses, and back to TOML tables.

A config has six sections. ``[data]``, ``[model]``, ``[train]``, ``[log]`` and ``[plugins]`` are
dataclasses (:data:`SECTIONS`); ``[optim]`` is an optimizer spec (``name``, ``lr`` and that
optimizer's other hyperparameters, see :mod:`pyrovae.training.optim`). Every error names the
file, the key and what is allowed. Reading a config for a run is :mod:`pyrovae.app.config_files`
(a user's own) and :mod:`pyrovae.app.run_record` (a run's record); ``--set`` is
:mod:`pyrovae.app.overrides`.
"""

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from pyrovae.app.plugins import PluginRecord
from pyrovae.data.catalog import DATASETS, SOURCE_KEYS, source_options
from pyrovae.data.datasets import DEFAULT_BINARIZE, Dataset, check_data_options, load_dataset
from pyrovae.errors import ConfigError, DataError, UnknownNameError, did_you_mean, one_line, shown
from pyrovae.models.registry import MODELS, check_model_options, family_defaults
from pyrovae.parts.likelihoods import LIKELIHOODS
from pyrovae.registry import _type_name, check_at_least, check_keys, check_type
from pyrovae.training.callbacks import CALLBACKS
from pyrovae.training.optim import DEFAULT_OPTIMIZER, check_optimizer, default_optimizer
from pyrovae.training.train_config import TrainConfig, check_against_data


@dataclass
class DataConfig:
    """``[data]``: which data set, where it is, how it is binarized. Any other key is an option of
    the data set's source (one registered in a plugin), checked against its signature."""

    #: digits (scikit-learn's bundled 8x8 digits), mnist, fashion_mnist, kmnist, cifar10, svhn, celeba
    #: (torchvision's), static_mnist (Larochelle's fixed binarization, with its validation split), frey_face,
    #: file (a file or folder: .npy, .npz, .pt, .h5, .hdf5, .h5ad, .zarr, .csv, images), or a source a plugin
    #: registers (pyrovae.DATASETS).
    name: str = "digits"
    #: torchvision's sets: their root folder; static_mnist: the folder of its three .amat files; frey_face: the
    #: .mat file or its folder; file: the file or folder.
    path: Optional[str] = None
    #: dynamic (x ~ Bernoulli(grey level) for each training batch), threshold (grey > 0.5) or none; unset:
    #: dynamic for digits and mnist, none otherwise (m2 under a label budget: threshold in place of dynamic).
    binarize: Optional[str] = None
    #: share of the points held out for the test ELBO where the data set has no test split.
    test_fraction: float = 0.1
    #: share of the training split held out as a validation split (a fixed choice, the same for every seed):
    #: validation_elbo at every evaluation, early stopping and best.pt read it; 0: none.
    validation_fraction: float = 0.0
    #: torchvision's sets and frey_face: download into path when missing.
    download: bool = True
    #: keep this many training labels (balanced per class, a fixed choice) and mask the rest, for
    #: semi-supervised families; unset: every label.
    labeled: Optional[int] = None
    #: file: the points' array in a file that holds several (.npz, .pt, HDF5, zarr; .h5ad: a layer, default X).
    key: Optional[str] = None
    #: file: the labels' array (default: y, where the file has it); .h5ad: an obs column; .csv: a header's column.
    label_key: Optional[str] = None
    #: file: what the values are multiplied by; unset: 1/255 for uint8 arrays (pixels 0..255 to [0, 1]), else 1,
    #: and 1 for a count likelihood (poisson, negative_binomial, ...: uint8 values are counts).
    scale: Optional[float] = None
    #: "auto": hold the splits in memory on the training device when their float32 points take at most
    #: half the memory the process may still use there, else stream them from disk a batch at a time;
    #: true: in memory (refused in one line if they do not fit); false: streamed.
    in_memory: Any = "auto"
    #: processes that read a streamed split's minibatches ahead of the step (0: in the training process).
    num_workers: int = 0
    #: map every split to (x - mean) / std per feature, with the training split's mean and standard deviation
    #: (recorded in the checkpoint; figures and samples are mapped back): for raw tables whose features have
    #: their own units. Not with data.binarize. A family with a likelihood option whose config names none then
    #: takes "gaussian" (written into the run's config.toml).
    standardize: bool = False
    #: a plugin source's own options: the table's other keys.
    options: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The ``[data]`` table as written: the fields, and a source's own options beside them."""
        table = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**table, **{k: _plain(v) for k, v in self.options.items()}}

    def check(self):
        DATASETS.get(self.name, "data.name")
        try:
            DATASETS.split({"name": self.name, **source_options(self.name, self._given())}, "data")
        except DataError as e:
            raise ConfigError(str(e)) from None
        try:
            check_data_options(self.binarize or DEFAULT_BINARIZE.get(self.name, "none"), self.test_fraction,
                               self.validation_fraction, self.in_memory, self.num_workers, self.standardize,
                               self.labeled)
        except DataError as e:
            raise ConfigError(str(e)) from None
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
                                           and 0 < self.scale < math.inf):
            raise ConfigError(f"data.scale = {shown(self.scale)}: must be a finite number > 0")

    def _given(self) -> Dict[str, Any]:
        """What the source may take: the common keys and its own options."""
        return {**{k: getattr(self, k) for k in SOURCE_KEYS}, **self.options}

    def load(self, device="cpu") -> Dataset:
        """The data set this section describes, on ``device``."""
        return load_dataset(self.name, binarize=self.binarize, test_fraction=self.test_fraction, device=device,
                            labeled=self.labeled, in_memory=self.in_memory, num_workers=self.num_workers,
                            validation_fraction=self.validation_fraction, standardize=self.standardize,
                            **self._given())


class ModelConfig:
    """``[model]``: the model family (``family``, default ``vae``) and that family's options, each
    checked against the family's constructor like a part's; an option left out takes the
    family's default. For ``vae``: ``latent_dim`` (the dimension of z), ``prior``,
    ``likelihood``, ``encoder`` and ``decoder`` (each a registered name or a table of options).

    Options read and write as attributes: ``config.model.latent_dim``, ``config.model.encoder = "conv"``.
    """

    def __init__(self, family: str = "vae", **options):
        self.__dict__["family"] = family
        self.__dict__["options"] = dict(options)

    def __getattr__(self, key):
        options = self.__dict__["options"]
        if key in options:
            return options[key]
        defaults = self.defaults()
        if key in defaults:
            return defaults[key]
        raise AttributeError(f"model.{key}: family {self.__dict__['family']!r} has no such option")

    def __setattr__(self, key, value):
        if key == "family":
            self.__dict__["family"] = value
        else:
            self.__dict__["options"][key] = value

    def __eq__(self, other):
        return isinstance(other, ModelConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"ModelConfig({self.to_dict()!r})"

    def defaults(self) -> Dict[str, Any]:
        """The family's options with their defaults, as config values (TOML-writable ones only)."""
        if not isinstance(self.family, str) or self.family not in MODELS:
            return {}
        return {k: _plain(v) for k, v in family_defaults(self.family).items() if _writable(v)}

    def to_dict(self) -> Dict[str, Any]:
        """The resolved ``[model]`` table: the family and every option, defaults included."""
        return {"family": self.family, **self.defaults(), **{k: _plain(v) for k, v in self.options.items()}}

    def check(self):
        if not isinstance(self.family, str):
            raise ConfigError(f"model.family = {shown(self.family)}: expected a string")
        MODELS.get(self.family, "model.family")
        check_model_options(self.family, self.options, "model")
        if "latent_dim" in self.to_dict():
            check_at_least("model.latent_dim", self.latent_dim, 1)


def _plain(value):
    """A default as a config value: tuples become lists (TOML has no tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _writable(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_writable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _writable(v) for k, v in value.items())
    return isinstance(value, (str, int, float, bool))


@dataclass
class LogConfig:
    """``[log]``: what a run writes besides its metrics, checkpoint and figures."""

    #: write TensorBoard event files to RUN_DIR/tensorboard (needs the tensorboard package; --tensorboard):
    #: every epoch the ELBO, its terms, the KL weight, the learning rate, images per second and active units;
    #: at every evaluation grids of samples and reconstructions. View them with tensorboard --logdir runs.
    tensorboard: bool = False
    #: log the run to MLflow (pip install 'pyrovae[mlflow]'; --mlflow): the resolved config flattened as params
    #: (model.latent_dim, ...), every metrics.jsonl key as a metric at its step, config.toml and the figures as
    #: artifacts, and after evaluate evaluation.json. --resume continues the same MLflow run, whose id is kept
    #: in RUN_DIR/mlflow.json.
    mlflow: bool = False
    #: the MLflow tracking URI; "" (the default): $MLFLOW_TRACKING_URI, else a SQLite database beside the run
    #: folder (runs/mlflow.db); a path is a file store (a folder such as mlruns).
    mlflow_uri: str = ""
    #: the MLflow experiment; "" (the default): the data set's name (data.name).
    experiment: str = ""
    #: callbacks around the training loop, by name (pyrovae.CALLBACKS, a plugin's too), each a name or a table of
    #: its options: ["print_elbo", { name = "other", every = 5 }]; "tensorboard" and "mlflow" are log.tensorboard
    #: and log.mlflow.
    callbacks: List[Any] = dataclasses.field(default_factory=list)

    def check(self):
        if not isinstance(self.callbacks, list):
            raise ConfigError(f"log.callbacks = {shown(self.callbacks)}: expected a list of names or tables")
        kept = []
        for i, spec in enumerate(self.callbacks):
            name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
            if not isinstance(name, str):
                raise ConfigError(f"log.callbacks[{i}] = {shown(spec)}: expected a callback's name or a table with "
                                  "'name'")
            if name in BUILT_IN_CALLBACKS and (isinstance(spec, str) or set(spec) == {"name"}):
                setattr(self, name, True)  # the same as log.tensorboard = true, log.mlflow = true
            else:
                kept.append(spec)
        self.callbacks = kept
        if self.tensorboard:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError("log.tensorboard = true needs the tensorboard package: "
                                  "pip install tensorboard (or pyrovae[tensorboard])") from None
        if self.mlflow:
            try:
                import mlflow  # noqa: F401
            except ImportError:
                raise ConfigError("log.mlflow = true needs the mlflow package: "
                                  "pip install mlflow-skinny (or pyrovae[mlflow])") from None

    def callback_specs(self) -> List[Any]:
        """The callbacks to build around the loop (:data:`pyrovae.CALLBACKS`): TensorBoard and MLflow
        where switched on, then ``log.callbacks``, each checked against the registry (one line naming
        the entry and the registered names: a plugin's callback needs its plugin named)."""
        specs = [name for name in BUILT_IN_CALLBACKS if getattr(self, name)] + list(self.callbacks)
        for i, spec in enumerate(self.callbacks):
            try:
                CALLBACKS.split(spec, f"log.callbacks[{i}]")
            except UnknownNameError as e:
                raise ConfigError(f"{e} (a plugin's callback is registered when its plugin is named: "
                                  "[plugins] modules, or --plugins)") from None
        return specs


@dataclass
class PluginsConfig:
    """``[plugins]``: user code run before the rest of a fresh run's config is checked, so that what
    it registers (priors, likelihoods, networks, model families, estimators) can be named in it.
    In a run's own config it is a record: opening the run runs none of it (see :mod:`pyrovae.app.plugins`)."""

    #: dotted module names, or .py files (relative to the config file), run from the bytes that are hashed;
    #: recorded as named (files as absolute paths), with a copy of each in RUN_DIR/plugins (never run).
    #: Opening a run runs none of them: name them with --plugins.
    modules: List[str] = field(default_factory=list)
    #: each module's source file, resolved when the run started; written by pyrovae.
    files: List[str] = field(default_factory=list)
    #: the SHA-256 of each file's bytes when the run started; written by pyrovae.
    sha256: List[str] = field(default_factory=list)

    def check(self):
        pass  # checked (and, for a fresh run, run) by config_from_dict or record_config, before the other sections

    def record(self) -> PluginRecord:
        return PluginRecord(tuple(self.modules), tuple(self.files), tuple(self.sha256))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "log": LogConfig,
            "plugins": PluginsConfig}


@dataclass
class Config:
    """A whole run: ``[data]``, ``[model]``, ``[train]`` and the ``[optim]`` spec."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: Dict[str, Any] = field(default_factory=default_optimizer)
    log: LogConfig = field(default_factory=LogConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)

    def check(self) -> "Config":
        self.data.check()
        self.model.check()
        self.train.check()
        check_against_data(self.train, self.data.labeled is not None, self.has_validation())
        self.log.check()
        check_optimizer(self.optim, self.train.epochs, self.has_validation())
        return self

    def has_validation(self) -> bool:
        """Whether the run will have a validation split: ``data.validation_fraction``, or the data
        set's own (static_mnist's)."""
        return bool(self.data.validation_fraction) or bool(
            getattr(DATASETS.get(self.data.name), "has_validation", False))

    def load_data(self, device="cpu") -> Dataset:
        """The data ``[data]`` names, read as ``[model]``'s likelihood scores them: for a count
        likelihood (``Likelihood.counts``) a file's uint8 values are counts, taken as they are
        (``data.scale`` unset means 1, not 1/255)."""
        data = self.data
        if data.scale is None and "scale" in DATASETS.options(data.name) and self.counts_likelihood():
            data = dataclasses.replace(data, scale=1.0)
        return data.load(device)

    def counts_likelihood(self) -> bool:
        """Whether the model scores counts: its likelihood (its ``likelihood`` option, where the family
        has one) does, or the family says so itself (the class attribute ``counts = True``: a topic model)."""
        family = self.model.family
        if isinstance(family, str) and family in MODELS and getattr(MODELS.get(family), "counts", False) is True:
            return True
        spec = self.model.to_dict().get("likelihood")
        name = spec.get("name") if isinstance(spec, dict) else spec
        return isinstance(name, str) and name in LIKELIHOODS and bool(getattr(LIKELIHOODS.get(name), "counts", False))

    def to_dict(self) -> Dict[str, Any]:
        return {**{s: _drop_none(getattr(self, s).to_dict() if s in ("model", "data")
                                 else dataclasses.asdict(getattr(self, s)))
                   for s in SECTIONS}, "optim": dict(self.optim)}


#: the [data] fields' defaults (a record written before a field existed reads as having its default)
DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig) if f.default is not dataclasses.MISSING}

def _drop_none(d):
    return {k: v for k, v in d.items() if v is not None}


def checked_section(cls, table, section: str):
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table, got {shown(table)}")
    if cls is ModelConfig:  # the family's options are checked by ModelConfig.check
        return ModelConfig(**table)
    if cls is DataConfig:  # keys that are not fields are the source's options, checked by DataConfig.check
        fields = {f.name for f in dataclasses.fields(cls)} - {"options"}
        own = {k: v for k, v in table.items() if k in fields}
        table = {**own, "options": {k: v for k, v in table.items() if k not in fields}}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    check_keys(section, table, fields)
    for key, value in table.items():
        if not check_type(value, hints[key]):
            raise ConfigError(f"{section}.{key} = {shown(value)}: expected {_type_name(hints[key])}")
    return cls(**table)


def check_sections(d: Dict[str, Any]) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"a config is a table of sections, got {shown(d)}")
    for section in d:
        if section not in (*SECTIONS, "optim"):
            valid = ", ".join((*SECTIONS, "optim"))
            raise ConfigError(f"[{one_line(str(section), 40)}]: unknown section"
                              f"{did_you_mean(section, (*SECTIONS, 'optim'))}; valid: {valid}")


def checked_config(d: Dict[str, Any]) -> Config:
    """Every section but ``[plugins]`` (already checked), validated into a Config."""
    optim = d.get("optim", default_optimizer())
    if not isinstance(optim, dict):
        raise ConfigError(f"[optim] must be a table, got {shown(optim)}")
    optim = {"name": DEFAULT_OPTIMIZER["name"], **optim}
    return Config(**{s: checked_section(cls, d.get(s, {}), s) for s, cls in SECTIONS.items()}, optim=optim).check()


#: the callbacks that the [log] keys of the same names switch on (pyrovae.CALLBACKS' built-in entries)
BUILT_IN_CALLBACKS = ("tensorboard", "mlflow")
