"""Run configuration: TOML -> validated dataclasses, and back.

A config has five sections. ``[data]``, ``[model]``, ``[train]`` and ``[log]`` are dataclasses below;
``[optim]`` is an optimizer spec (``name``, ``lr`` and that optimizer's other
hyperparameters, see :mod:`pyrovae.training.optim`). Every error names the file, the key and what is
allowed. ``--set section.key=value`` overrides any key (``model.prior.num_components=5``
reaches into a part's options).
"""

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pyrovae.app.files import CHECKPOINT, CONFIG, LOCK, METRICS
from pyrovae.app.plugins import PluginRecord, needs_plugins_message, parse_record, run_named_plugins, run_own_plugins
from pyrovae.app.tomlfile import parse_toml, read_config_text
from pyrovae.data.catalog import DATASETS, SOURCE_KEYS, source_options
from pyrovae.data.datasets import (
    DEFAULT_BINARIZE,
    IN_MEMORY,
    Dataset,
    check_num_workers,
    load_dataset,
)
from pyrovae.data.splits import BINARIZATIONS
from pyrovae.errors import ConfigError, DataError, UnknownNameError, one_line, shown
from pyrovae.infer.algorithms import ALGORITHMS, algorithm_name
from pyrovae.models.registry import MODELS, check_model_options, family_defaults, labeled_binarize, labeled_training
from pyrovae.parts.likelihoods import LIKELIHOODS
from pyrovae.registry import _type_name, check_at_least, check_choice, check_type
from pyrovae.training.callbacks import CALLBACKS
from pyrovae.training.optim import DEFAULT_OPTIMIZER, check_optimizer, default_optimizer
from pyrovae.training.train_config import TrainConfig, check_against_data


@dataclass
class DataConfig:
    """``[data]``: which data set, where it is, how it is binarized. Any other key is an option of
    the data set's source (one registered in a plugin), checked against its signature."""

    #: digits (scikit-learn's bundled 8x8 digits), mnist, fashion_mnist, kmnist, cifar10, svhn, celeba
    #: (torchvision's), frey_face, file (a file or folder: .npy, .npz, .pt, .h5, .hdf5, .h5ad, .zarr, .csv,
    #: images), or a source a plugin registers (pyrovae.DATASETS).
    name: str = "digits"
    #: torchvision's sets: their root folder; frey_face: the .mat file or its folder; file: the file or folder.
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
        if self.binarize is not None:
            check_choice("data.binarize", self.binarize, BINARIZATIONS)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction = {self.test_fraction}: must be in (0, 1)")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"data.validation_fraction = {self.validation_fraction}: must be in [0, 1)")
        if self.labeled is not None:
            check_at_least("data.labeled", self.labeled, 1)
        if self.in_memory not in IN_MEMORY or not isinstance(self.in_memory, (str, bool)):
            raise ConfigError(f"data.in_memory = {shown(self.in_memory)}: valid: \"auto\", true, false")
        check_num_workers(self.num_workers)
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
    #: the MLflow tracking URI; "" (the default): a local file store, the folder mlruns beside the run folder
    #: (runs/mlruns); a path is a file store too.
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
        validation = bool(self.data.validation_fraction)
        check_against_data(self.train, self.data.labeled is not None, validation)
        self.log.check()
        check_optimizer(self.optim, self.train.epochs, validation)
        return self

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
#: [data] keys that say how the data are read, not which: a resumed run may change them (and opening a
#: run never downloads: :func:`without_destinations`)
READING_KEYS = frozenset({"in_memory", "num_workers", "download"})


def run_difference(a: Dict[str, Any], b: Dict[str, Any], plugins: bool = False) -> Optional[str]:
    """The first ``section.key`` in which two resolved configs (as dicts) differ in a way that makes
    them two runs: the data, the model, the algorithm and the keys it cannot resume across (batch
    size, estimator, seed, ...), the optimizer's name, and with ``plugins`` the plugin record.
    Others (``train.epochs``, ``eval_every``, the device, ...) may change when a run is resumed."""
    sections = ("data", "model", *(("plugins",) if plugins else ()))
    for section in sections:
        x, y = a.get(section, {}), b.get(section, {})
        if not isinstance(x, dict) or not isinstance(y, dict):
            return f"[{section}]"
        if section == "data":  # a key an earlier version did not write has its default (validation_fraction)
            x, y = ({**DATA_DEFAULTS, **v} for v in (x, y))
        if section == "plugins":  # a record written before plugins.files existed lacks it: empty lists
            x, y = ({k: v.get(k, []) for k in {"modules", "files", "sha256"} | set(v)} for v in (x, y))
        for key in sorted(set(x) | set(y), key=str):
            if section == "data" and key in READING_KEYS:
                continue
            if x.get(key) != y.get(key):
                return f"{section}.{one_line(str(key), 40)}"
    defaults = dataclasses.asdict(TrainConfig())
    ta, tb = a.get("train", {}), b.get("train", {})
    if not isinstance(ta, dict) or not isinstance(tb, dict):
        return "[train]"
    algorithm = tb.get("algorithm", defaults["algorithm"])
    name = algorithm_name(algorithm) if isinstance(algorithm, (str, dict)) else None
    keys = ALGORITHMS.get(name).resume_keys if isinstance(name, str) and name in ALGORITHMS else ()
    for key in ("algorithm", *keys):
        if ta.get(key, defaults[key]) != tb.get(key, defaults[key]):
            return f"train.{key}"
    oa, ob = a.get("optim", {}), b.get("optim", {})
    if not isinstance(oa, dict) or not isinstance(ob, dict) or oa.get("name") != ob.get("name"):
        return "optim.name"
    if oa.get("schedule", "constant") != ob.get("schedule", "constant"):  # its state continues in the checkpoint
        return "optim.schedule"
    return None


def _drop_none(d):
    return {k: v for k, v in d.items() if v is not None}


def _section(cls, table, section: str):
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
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{section}.{one_line(str(key), 40)}: unknown key; "
                              f"valid keys: {', '.join(sorted(fields))}")
        if not check_type(value, hints[key]):
            raise ConfigError(f"{section}.{key} = {shown(value)}: expected {_type_name(hints[key])}")
    return cls(**table)


def _check_sections(d: Dict[str, Any]) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"a config is a table of sections, got {shown(d)}")
    for section in d:
        if section not in (*SECTIONS, "optim"):
            valid = ", ".join((*SECTIONS, "optim"))
            raise ConfigError(f"[{one_line(str(section), 40)}]: unknown section; valid: {valid}")


def config_from_dict(d: Dict[str, Any], base_dir: Optional[Path] = None, plugins: Sequence[str] = ()) -> Config:
    """Validate a user's own config, a parsed TOML document (missing keys take their defaults),
    for a fresh run. ``[plugins]`` comes first: its modules (relative files from ``base_dir``)
    and the extra ``plugins`` the user names are run from the bytes that are hashed, and
    recorded (:func:`pyrovae.app.plugins.run_own_plugins`), before the rest is checked."""
    _check_sections(d)
    table = _section(PluginsConfig, d.get("plugins", {}), "plugins")
    recorded = table.record() if table.sha256 else None
    record = run_own_plugins([*table.modules, *plugins], base_dir, recorded)
    return _checked(with_family_training({**d, "plugins": record.as_config()}))


def with_family_training(d: Dict[str, Any]) -> Dict[str, Any]:
    """A fresh run's config with the settings its family trains with under a label budget, where the
    config leaves them out: ``[train]`` keys (:func:`pyrovae.models.registry.labeled_training`) and
    a binarization in place of a dynamic default (:func:`pyrovae.models.registry.labeled_binarize`);
    and, for standardized data (``data.standardize``), a Gaussian likelihood where the family takes
    one and the config names none. They are then written in the run's ``config.toml`` like any
    other key."""
    model, data, train = (d.get(s, {}) for s in ("model", "data", "train"))
    if not all(isinstance(t, dict) for t in (model, data, train)):
        return d
    family = model.get("family", "vae")
    if data.get("standardize") is True and "likelihood" not in model and isinstance(family, str) \
            and family in MODELS and "likelihood" in MODELS.options(family):
        # standardized features are real numbers around 0: a Gaussian, not the default for pixels in [0, 1]
        model = {**model, "likelihood": "gaussian"}
        d = {**d, "model": model}
    if data.get("labeled") is None:
        return d
    batch = train.get("batch_size", TrainConfig.batch_size)
    if not isinstance(batch, int) or isinstance(batch, bool):
        return d  # refused by the [train] checks
    engine = train.get("engine", TrainConfig.engine)
    fill = labeled_training(family, train, batch, engine if engine in ("torch", "pyro") else "torch")
    binarize = labeled_binarize(family)
    name = data.get("name", DataConfig.name)
    if binarize and data.get("binarize") is None and isinstance(name, str) and DEFAULT_BINARIZE.get(name) == "dynamic":
        d = {**d, "data": {**data, "binarize": binarize}}
    return {**d, "train": {**train, **fill}} if fill else d


#: the [log] keys that name a destination (where a run is tracked): a run's record of them is never followed
DESTINATION_KEYS = ("mlflow", "mlflow_uri")
#: the callbacks that the [log] keys of the same names switch on (pyrovae.CALLBACKS' built-in entries)
BUILT_IN_CALLBACKS = ("tensorboard", "mlflow")


def without_destinations(d: Dict[str, Any]) -> Dict[str, Any]:
    """A run's record with every destination it names dropped (a run folder is data, and names
    no destination: ``docs/run-folders.md``): its MLflow tracking (``log.mlflow``,
    ``log.mlflow_uri``, shown by :func:`pyrovae.app.tracking.tracking_notice` instead) and any
    download into ``data.path`` (``data.download = false``). The user's own command line, applied
    after this, may name them again."""
    out = dict(d)
    if isinstance(out.get("log"), dict):
        out["log"] = {k: v for k, v in out["log"].items() if k not in DESTINATION_KEYS}
        if isinstance(out["log"].get("callbacks"), list):  # "mlflow" there is log.mlflow
            out["log"]["callbacks"] = [spec for spec in out["log"]["callbacks"] if not _names_mlflow(spec)]
    if isinstance(out.get("data", {}), dict):
        out["data"] = {**out.get("data", {}), "download": False}
    return out


def _names_mlflow(spec) -> bool:
    return spec == "mlflow" or (isinstance(spec, dict) and spec.get("name") == "mlflow")


def record_config(d: Dict[str, Any], plugins: Sequence[str] = (), run_dir=None,
                  command: str = "pyrovae evaluate RUN_DIR {plugins}", overrides: Sequence[str] = (),
                  keep_destinations: bool = False) -> Config:
    """Validate a run's own config (its record), running nothing it names and following no
    destination it names (:func:`without_destinations`; ``keep_destinations``: kept as recorded,
    for rewriting the record itself, never for acting on it); then the user's ``overrides``.

    ``[plugins]`` is read as the run's record (:func:`pyrovae.app.plugins.parse_record`); only the
    ``plugins`` the user names run, each checked against that record first (none from inside
    ``run_dir``). A config that names a part or family no registry holds while recorded plugins
    were left unnamed is one line that names what it needs, the recorded files and their
    SHA-256, and ``command`` (with ``{plugins}`` for the flags) to open the run with them.
    """
    _check_sections(d)
    d = apply_overrides(d if keep_destinations else without_destinations(d), list(overrides))
    record = parse_record(d.get("plugins", {}))
    named = run_named_plugins(plugins, record, run_dir)
    try:
        return _checked({**d, "plugins": record.as_config()})
    except UnknownNameError as e:
        unnamed = [i for i in range(len(record.files)) if i not in named]
        if not unnamed:
            raise
        raise ConfigError(needs_plugins_message(e, record, unnamed, command, run_dir)) from None


def _checked(d: Dict[str, Any]) -> Config:
    """Every section but ``[plugins]`` (already checked), validated into a Config."""
    optim = d.get("optim", default_optimizer())
    if not isinstance(optim, dict):
        raise ConfigError(f"[optim] must be a table, got {shown(optim)}")
    optim = {"name": DEFAULT_OPTIMIZER["name"], **optim}
    return Config(**{s: _section(cls, d.get(s, {}), s) for s, cls in SECTIONS.items()}, optim=optim).check()


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
                raise ConfigError(f"--set {shown(text)}: {'.'.join(path[:i + 1])} is not a table")
            node[part] = child
            node = child
        node[path[-1]] = value
    return d


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None, plugins: Sequence[str] = (),
                record_of=None, command: str = "pyrovae train --out RUN_DIR --resume {plugins}") -> Config:
    """Read a TOML config (or the embedded default when ``path`` is None) and apply overrides.

    A user's own config runs its ``[plugins]`` and the ``plugins`` named here
    (:func:`config_from_dict`). ``record_of`` (a run folder) says the file is that run's record,
    as is any config inside a run folder: then nothing it names runs, and ``plugins`` are checked
    against its record (:func:`record_config`).
    """
    d: Dict[str, Any] = {}
    if path is not None:
        d = parse_toml(read_config_text(path), path)
        if record_of is None:
            record_of = enclosing_run_folder(path)
    where = path or "default config"
    try:
        if record_of is not None:  # the record's destinations are dropped before the user's overrides apply
            return record_config(d, plugins, record_of, command, overrides or ())
        d = apply_overrides(d, overrides)
        return config_from_dict(d, Path(path).parent if path else None, plugins)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


#: what a run folder holds besides its config.toml, any one of which marks it as one
RUN_FOLDER_MARKS = (CHECKPOINT, METRICS, LOCK)


def enclosing_run_folder(path) -> Optional[Path]:
    """The run folder a file lies in (the nearest folder above it that holds a ``config.toml``
    beside a checkpoint, metrics or lock file), or None."""
    for folder in Path(path).resolve().parents:
        if (folder / CONFIG).is_file() and any((folder / m).exists() for m in RUN_FOLDER_MARKS):
            return folder
    return None


