"""Opening a run folder: its record read as data, its checkpoint checked, its model built and
loaded, with nothing in the folder run (:func:`open_run`, :func:`load`); one place for
``evaluate``, ``encode``, ``sample`` and ``pyrovae.load``."""

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from pyrovae.app.checkpoint import counters_problem, read_checkpoint
from pyrovae.app.config import Config
from pyrovae.app.files import (
    BEST,
    CHECKPOINT,
    CONFIG,
)
from pyrovae.app.run_record import record_config, run_difference
from pyrovae.app.tomlfile import parse_toml, read_config_text
from pyrovae.devices import resolve_device
from pyrovae.errors import ConfigError, RunDirError, one_line, shell_word, shown
from pyrovae.models.base import Model
from pyrovae.models.registry import build_family, takes_labels
from pyrovae.training.memory import build_budget, meta_model
from pyrovae.training.state import load_model_state


def build_model(model_cfg, event_shape, num_classes: Optional[int] = None) -> Model:
    """A model from a ``[model]`` config and the data's event shape (and number of classes);
    networks too large to allocate are one ConfigError line."""
    try:
        return build_family(model_cfg, event_shape, num_classes)
    except (RuntimeError, MemoryError, OverflowError) as e:  # e.g. layers too large to allocate
        raise ConfigError(f"model: cannot build the networks for data of shape {tuple(event_shape)} "
                          f"({type(e).__name__}: {one_line(str(e), 120)})") from None


def checked_model_shapes(config: Config, event_shape, num_classes, device="cpu") -> Optional[Model]:
    """The run's model built on the meta device, within the memory ``device`` has (refused in one
    line, naming the largest size in ``[model]``, as soon as building it creates more than that:
    a flow count of 10^9 is refused at once, not built); None if it cannot be built there."""
    build = lambda: build_family(config.model, event_shape, num_classes)  # noqa: E731
    return meta_model(build, device, *_sizes(config, num_classes))


def build_run_model(config: Config, event_shape, num_classes, device="cpu") -> Model:
    """The run's model, built for real within the memory ``device`` has (see :func:`build_budget`)."""
    with build_budget(device, *_sizes(config, num_classes)):
        return build_model(config.model, event_shape, num_classes)


def _sizes(config: Config, num_classes) -> tuple:
    """What a refusal names: the ``[model]`` options, and the classes for a family that reads labels."""
    return config.model.to_dict(), num_classes if takes_labels(config.model.family) else None



def read_run_record(run_dir) -> Dict[str, Any]:
    """A run folder's ``config.toml`` as parsed (nothing validated, nothing run); a missing,
    hostile or malformed file is one :class:`RunDirError` line."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a pyrovae run folder (no {CONFIG})")
    try:
        return parse_toml(read_config_text(path), path)
    except ConfigError as e:
        raise RunDirError(str(e)) from None


def read_run_config(run_dir, plugins: Sequence[str] = (), command: str = "pyrovae evaluate RUN_DIR {plugins}",
                    recorded: Optional[Dict[str, Any]] = None) -> Config:
    """A run folder's ``config.toml`` (``recorded``: as already parsed), validated as the run's
    record: nothing it names runs, and only the ``plugins`` the user names (checked against the
    record) do (see :func:`pyrovae.app.run_record.record_config`). Hostile or malformed text is one line."""
    path = Path(run_dir) / CONFIG
    d = read_run_record(run_dir) if recorded is None else recorded
    try:
        return record_config(d, plugins, run_dir, command.replace("RUN_DIR", shell_word(run_dir)))
    except ConfigError as e:
        raise RunDirError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


class OpenRun:
    """A run folder opened for reading: its config (``config.toml``, the one source of truth,
    with the checkpoint's copy checked against it), its checked checkpoint, and the model with its
    weights (on the CPU)."""

    def __init__(self, run_dir, config: Config, state: Dict[str, Any], model: Model):
        self.run_dir, self.config, self.state, self.model = Path(run_dir), config, state, model


def check_one_config(run_dir, recorded: Dict[str, Any], state: Dict[str, Any]) -> None:
    """The checkpoint's copy of the config must agree with ``config.toml`` (``recorded``, as parsed)
    on every key that makes the run what it is (data, model, plugins, algorithm, the keys
    ``--resume`` refuses to change, the optimizer): else one line naming the first key that differs."""
    differs = run_difference(recorded, state["config"], plugins=True)
    if differs:
        raise RunDirError(f"{Path(run_dir) / CHECKPOINT}: its config and {Path(run_dir) / CONFIG} differ in "
                          f"{differs}; a run has one config (config.toml, which the checkpoint's copy must match): "
                          "the folder was altered")


#: the checkpoints a run folder may hold, by ``which``
WHICH = {"last": CHECKPOINT, "best": BEST}


def checkpoint_path(run_dir, which: str = "last", flag: str = "which") -> Path:
    """The checkpoint ``which`` names in a run folder: ``last`` (``checkpoint.pt``) or ``best``
    (``best.pt``, kept by a run with ``train.early_stopping`` or a validation split)."""
    if which not in WHICH:
        raise RunDirError(f"{flag} = {shown(which)}: valid: {', '.join(WHICH)}")
    path = Path(run_dir) / WHICH[which]
    if which == "best" and not path.is_file() and (Path(run_dir) / CHECKPOINT).is_file():
        raise RunDirError(f"{path}: no best checkpoint here; a run keeps best.pt when it has a validation split "
                          "(data.validation_fraction) or train.early_stopping")
    return path


def open_run(run_dir, plugins: Sequence[str] = (), command: str = "pyrovae evaluate RUN_DIR {plugins}",
             device="cpu", model: Optional[Model] = None, which: str = "last") -> OpenRun:
    """Open a run folder without running anything from it (see :mod:`pyrovae.app.plugins`).

    ``config.toml`` is read as the run's record (only the ``plugins`` the user names run, checked
    against it); the checkpoint is read and checked (:func:`read_checkpoint`), its config
    checked against ``config.toml`` (:func:`check_one_config`) and its counters against the
    config; the model is sized on the meta device within the memory ``device`` has, then built,
    and the saved weights (names, shapes, dtypes, finite values) loaded into it. ``model``: an
    instance to load the weights into instead (a model built in Python). ``which``: the last
    checkpoint or the best epoch's (:func:`checkpoint_path`), checked alike.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a pyrovae run folder (no such folder)")
    path = checkpoint_path(run_dir, which)
    state = read_checkpoint(path)
    recorded = read_run_record(run_dir)
    check_one_config(run_dir, recorded, state)  # before anything the config names is looked at
    config = read_run_config(run_dir, plugins, command, recorded)
    problem = counters_problem(state, config)
    if problem:
        raise RunDirError(f"{path}: malformed checkpoint: {problem}")
    if model is None:
        try:
            checked_model_shapes(config, state["event_shape"], state.get("num_classes"), device)
        except ConfigError as e:
            raise RunDirError(f"{path}: the run's model: {e}") from None
        try:
            model = build_run_model(config, state["event_shape"], state.get("num_classes"), device)
        except ConfigError as e:
            raise RunDirError(f"{path}: the run's model: {e}") from None
    load_model_state(model, state["model"], path)
    return OpenRun(run_dir, config, state, model)


def load(run_dir, device="cpu", model: Optional[Model] = None, plugins: Sequence[str] = (),
         which: str = "last") -> Model:
    """The trained model of a run folder (a :class:`~pyrovae.VAE` for the ``vae`` family), on
    ``device`` (the CPU unless told otherwise): its last checkpoint, or with ``which="best"`` the
    best epoch's (``best.pt``: by ``train.early_stopping``'s metric, else the validation ELBO).

    Opening a run folder never runs code from it: the checkpoint is read with ``torch.load(...,
    weights_only=True)`` after its archive is checked, and nothing the folder names is imported.
    A run trained with plugins needs them named: ``plugins=["my_parts.py"]`` (files or dotted
    module names), each checked against the SHA-256 the run recorded and run from the bytes
    that were hashed; or import the plugin yourself before ``load``, so that its registries
    already hold what the run needs. Errors are :class:`~pyrovae.PyrovaeError` subclasses, as in
    the CLI (e.g. a ``ConfigError`` for ``device="cuda"`` on a machine without CUDA).

    ``model``: for a run trained on a model built in Python (``pyrovae.train(config, out,
    model=...)``), an instance of the same architecture to load the weights into (missing,
    unknown or misshapen parameters are one line).

    Example::

        vae = pyrovae.load("runs/digits")
        images = vae.sample(64)
    """
    device = resolve_device(str(device), "device")
    if isinstance(plugins, str):
        plugins = [plugins]
    opened = open_run(run_dir, plugins, f"pyrovae.load({str(run_dir)!r}, plugins={{plugin_list}})", device, model,
                      which)
    return opened.model.to(device).eval()


# -- converting an older checkpoint ---------------------------------------------------------
