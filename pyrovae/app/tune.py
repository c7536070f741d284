"""``pyrovae tune``: a hyperparameter search on Optuna, every trial a normal run folder.

A config's ``[tune]`` table describes the search; every other section is the config each trial
trains, with the trial's values set at the keys ``[tune.space]`` names::

    [tune]
    trials = 20                      # finished trials (complete or pruned) the study ends at
    metric = "validation_elbo"       # validation_elbo (default), test_elbo or test_nll
    sampler = "tpe"                  # tpe (default), random, or a table: { name = "tpe", seed = 1 }
    pruner = "median"                # median (default), percentile, hyperband, successive_halving, none

    [tune.space]
    "optim.lr" = { low = 1e-4, high = 1e-2, log = true }   # a float range
    "model.latent_dim" = { low = 2, high = 32 }            # an integer range (integer bounds)
    "model.prior" = ["standard_normal", "vamp"]            # a list of choices

**Trials.** Trial n trains ``STUDY_DIR/trial-000n`` with :func:`pyrovae.train`, so any trial can
be evaluated, resumed or opened like any other run. At every evaluation (``train.eval_every``)
it reports the metric's ELBO (the validation ELBO where the data have a validation split, else
the test ELBO) to Optuna, whose pruner may stop it there: a pruned trial keeps its checkpoint.
A trial's value is its best evaluation's metric (the epoch ``best.pt`` holds where there is a
validation split); for ``test_nll``, the importance-sampled test NLL (``nll_samples`` samples per
point, default 1000) of that checkpoint, with ``direction = "minimize"``.

**The study** lives in Optuna's storage: by default ``sqlite:///STUDY_DIR/study.db``, so a study
that is stopped or killed goes on where it was when run again; ``--storage URL`` takes any
database URL Optuna's ``RDBStorage`` opens, and several processes or machines pointed at one
storage run trials of one study together (each trial is run once; its folder is on the machine
that ran it). The study's name is ``[tune] study_name``, default the study folder's name.

**Interruptions.** Ctrl-C stops the running trial at a step with a checkpoint (as for ``pyrovae
train``) and requeues it; a trial whose process was killed is found by Optuna's heartbeat
(:data:`HEARTBEAT_SECONDS`) and requeued. A requeued trial resumes its run folder (``--resume``)
where that folder is on this machine, its earlier evaluations reported again.

**At the end** ``STUDY_DIR`` holds ``trials.csv`` (every trial), ``best.toml`` (the best trial's
config, without ``[tune]``, ready for ``pyrovae train``), ``history.png`` and ``importance.png``
(Optuna's optimization history and parameter importances), and a table of the best trials is
printed. Each finished trial prints one line.
"""

import contextlib
import copy
import csv
import io
import math
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from pyrovae.app.files import atomic_write_bytes, describe_os_error
from pyrovae.app.overrides import apply_overrides, set_key
from pyrovae.app.tomlfile import dumps, parse_toml, read_config_text
from pyrovae.errors import ConfigError, PyrovaeError, RunDirError, one_line, shown
from pyrovae.training.callbacks import Callback

#: what a trial's value may be, and the direction each is optimized in
METRICS = {"validation_elbo": "maximize", "test_elbo": "maximize", "test_nll": "minimize"}
#: the samplers by name: Optuna's classes (each takes its own options, a seed among them)
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler", "gp": "GPSampler"}
#: failed trials in a row after which a process stops its study (every draw failing: a config that cannot train)
MAX_FAILURES_IN_A_ROW = 5
#: the pruners by name: Optuna's classes ("none": never prune)
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "none": "NopPruner"}
#: how often a running trial tells the storage it is alive; one silent for 3 times this is requeued
HEARTBEAT_SECONDS = 10
#: tries at opening the storage (processes that create one database together race to create its tables)
STORAGE_ATTEMPTS = 5
#: the trial's user attribute that names its run folder (relative to the study folder)
RUN_DIR_ATTR = "run_dir"
#: the study folder's files
STUDY_DB, TRIALS_CSV, BEST_TOML, HISTORY_PNG, IMPORTANCE_PNG = (
    "study.db", "trials.csv", "best.toml", "history.png", "importance.png")


@dataclass
class Dimension:
    """One key of ``[tune.space]``: a float range, an integer range, or a list of choices."""

    key: str
    kind: str  #: "float", "int" or "categorical"
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: List[Any] = field(default_factory=list)

    @classmethod
    def parse(cls, key: str, spec, where: str) -> "Dimension":
        name = f"{where}: tune.space.{shown(key)}"
        if not isinstance(key, str) or len(key.split(".")) < 2 or not all(key.split(".")):
            raise ConfigError(f"{name}: expected a config key section.key, e.g. \"optim.lr\"")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{name} = []: an empty list of choices; give at least one")
            plain = all(isinstance(c, (str, int, float, bool)) for c in spec)
            if not plain or len({repr(c) for c in spec}) < len(spec):
                raise ConfigError(f"{name} = {shown(spec)}: choices are distinct strings, numbers or booleans")
            return cls(key, "categorical", choices=list(spec))
        if not isinstance(spec, dict):
            raise ConfigError(f"{name} = {shown(spec)}: expected {{ low = .., high = .. }} (log = true, step = ..) "
                              "or a list of choices")
        unknown = set(spec) - {"low", "high", "log", "step"}
        if unknown or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{name} = {shown(spec)}: a range takes low and high, and optionally log and step")
        low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
        number = (int, float)
        if not all(isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
            raise ConfigError(f"{name}: low and high must be finite numbers, got {shown(low)} and {shown(high)}")
        if not isinstance(log, bool):
            raise ConfigError(f"{name}: log = {shown(log)}: expected true or false")
        if low > high:
            raise ConfigError(f"{name}: an empty range (low = {low} > high = {high})")
        if log and low <= 0:
            raise ConfigError(f"{name}: log = true needs low > 0, got {low}")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        if step is not None:
            if not (isinstance(step, number) and not isinstance(step, bool) and step > 0) or log:
                raise ConfigError(f"{name}: step = {shown(step)}: must be a number > 0, and not with log = true")
            if kind == "int" and not isinstance(step, int):
                raise ConfigError(f"{name}: an integer range takes an integer step, got {shown(step)}")
        return cls(key, kind, low, high, log, step)

    def suggest(self, trial):
        """The trial's value for this key (Optuna's ``suggest_*``)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def corners(self) -> List[Any]:
        """The values every trial's config is checked at before the study starts: each choice, or both ends."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high] if self.kind == "int" else [float(self.low), float(self.high)]


@dataclass
class TuneConfig:
    """``[tune]``: the search (see the module's docstring)."""

    trials: int = 20
    metric: str = "validation_elbo"
    #: maximize or minimize; unset: the metric's own (ELBOs up, the NLL down)
    direction: Optional[str] = None
    sampler: Any = "tpe"
    pruner: Any = "median"
    #: test_nll: importance samples per test point
    nll_samples: int = 1000
    #: the study's name in the storage; "": the study folder's name
    study_name: str = ""
    space: List[Dimension] = field(default_factory=list)

    @classmethod
    def parse(cls, table, where: str) -> "TuneConfig":
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [tune] must be a table, got {shown(table)}")
        known = {"trials", "metric", "direction", "sampler", "pruner", "nll_samples", "study_name", "space"}
        for key in table:
            if key not in known:
                raise ConfigError(f"{where}: tune.{shown(key)}: unknown key; valid: {', '.join(sorted(known))}")
        space = table.get("space")
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{where}: [tune.space] is missing or empty: name at least one key to search, e.g. "
                              "\"optim.lr\" = { low = 1e-4, high = 1e-2, log = true }")
        tune = cls(**{k: v for k, v in table.items() if k != "space"},
                   space=[Dimension.parse(k, v, where) for k, v in space.items()])
        tune.check(where)
        return tune

    def check(self, where: str) -> None:
        if not (isinstance(self.trials, int) and not isinstance(self.trials, bool) and 1 <= self.trials <= 10**6):
            raise ConfigError(f"{where}: tune.trials = {shown(self.trials)}: must be an integer in [1, 10^6]")
        if self.metric not in METRICS:
            raise ConfigError(f"{where}: tune.metric = {shown(self.metric)}: valid: {', '.join(METRICS)}")
        if self.direction not in (None, "maximize", "minimize"):
            raise ConfigError(f"{where}: tune.direction = {shown(self.direction)}: valid: maximize, minimize")
        if not (isinstance(self.nll_samples, int) and not isinstance(self.nll_samples, bool)
                and 1 <= self.nll_samples <= 10**6):
            raise ConfigError(f"{where}: tune.nll_samples = {shown(self.nll_samples)}: must be an integer in "
                              "[1, 10^6]")
        if not isinstance(self.study_name, str):
            raise ConfigError(f"{where}: tune.study_name = {shown(self.study_name)}: expected a string")
        _named("sampler", self.sampler, SAMPLERS, where)
        _named("pruner", self.pruner, PRUNERS, where)

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]


def _named(what: str, spec, names: Dict[str, str], where: str):
    """``"name"`` or ``{ name = "name", option = .. }`` -> (Optuna's class, options), checked."""
    import inspect

    import optuna

    name, options = (spec, {}) if isinstance(spec, str) else (
        (spec.get("name"), {k: v for k, v in spec.items() if k != "name"}) if isinstance(spec, dict) else (None, {}))
    if name not in names:
        raise ConfigError(f"{where}: tune.{what} = {shown(spec)}: valid: {', '.join(names)} (a name, or a table "
                          "with name and the options of Optuna's class)")
    module = optuna.samplers if what == "sampler" else optuna.pruners
    cls = getattr(module, names[name])
    accepted = inspect.signature(cls).parameters
    for key in options:
        if key not in accepted or accepted[key].kind is inspect.Parameter.VAR_KEYWORD:
            valid = ", ".join(k for k, p in accepted.items() if p.kind is p.POSITIONAL_OR_KEYWORD
                              or p.kind is p.KEYWORD_ONLY)
            raise ConfigError(f"{where}: tune.{what}.{shown(key)}: not an option of optuna's {names[name]}; "
                              f"valid: {valid}")
    return cls, options


def _built(what: str, spec, names, where: str):
    cls, options = _named(what, spec, names, where)
    try:
        with _quiet_optuna():
            return cls(**options)
    except Exception as e:  # noqa: BLE001 - Optuna's own check of an option's value
        raise ConfigError(f"{where}: tune.{what} = {shown(spec)}: {type(e).__name__}: "
                          f"{one_line(str(e), 160)}") from None


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's warnings that its heartbeat and samplers are experimental, silenced: pyrovae chose them."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated.*", category=FutureWarning)
        yield


class Search:
    """A study: the config file's sections, its ``[tune]``, and where the trials go."""

    def __init__(self, config_path: str, study_dir, overrides: Sequence[str] = (), plugins: Sequence[str] = (),
                 trials: Optional[int] = None, storage: Optional[str] = None, threads: Optional[int] = None):
        self.config_path = str(config_path)
        d = parse_toml(read_config_text(self.config_path), self.config_path)
        if "tune" not in d:
            raise ConfigError(f"{self.config_path}: no [tune] table: name the keys to search in [tune.space], "
                              "e.g. \"optim.lr\" = { low = 1e-4, high = 1e-2, log = true }")
        d = apply_overrides(d, list(overrides))  # --set tune.trials=.. too
        tune_table = d.pop("tune")
        self.base = d
        self.tune = TuneConfig.parse(tune_table, self.config_path)
        if trials is not None:
            self.tune.trials = trials
            self.tune.check("--trials")
        self.plugins, self.threads = list(plugins), threads
        self.study_dir = Path(study_dir)
        self.storage_url = storage or f"sqlite:///{self.study_dir.resolve() / STUDY_DB}"
        self.study_name = self.tune.study_name or self.study_dir.resolve().name
        # every trial's config is valid at the space's corners: a bad key is refused before anything runs
        for dim in self.tune.space:
            for value in dim.corners():
                self.trial_config({dim.key: value})
        self.base_config = self.trial_config({})
        if self.tune.metric == "validation_elbo" and not self.base_config.has_validation():
            raise ConfigError(f"{self.config_path}: tune.metric = 'validation_elbo' needs a validation split: set "
                              "data.validation_fraction (e.g. 0.1), or tune.metric = 'test_elbo'")
        _built("sampler", self.tune.sampler, SAMPLERS, self.config_path)  # its options' values checked now
        self.pruner = _built("pruner", self.tune.pruner, PRUNERS, self.config_path)

    def trial_dict(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """The config as a TOML document with ``params`` set (``best.toml`` is this for the best trial)."""
        d = copy.deepcopy(self.base)
        for key, value in params.items():
            set_key(d, key.split("."), value, f"{self.config_path}: tune.space.{shown(key)}")
        return d

    def trial_config(self, params: Dict[str, Any]):
        """The checked :class:`~pyrovae.Config` of a trial with ``params`` (each key set as ``--set`` sets it)."""
        from pyrovae.app.config_files import config_from_dict

        d = self.trial_dict(params)
        d.setdefault("train", {})["progress"] = False
        if self.threads is not None:
            d["train"]["num_threads"] = self.threads
        try:
            return config_from_dict(d, Path(self.config_path).parent, self.plugins)
        except ConfigError as e:
            at = ", ".join(f"{k} = {shown(v)}" for k, v in params.items())
            raise ConfigError(f"{self.config_path}: " + (f"with tune.space {at}: " if at else "") + str(e)) from None

    # -- the study ------------------------------------------------------------------------------
    def open_study(self):
        """The study in its storage (created on the first run, loaded on the next ones).

        A seeded sampler (``sampler = { name = .., seed = S }``) is seeded with S plus the number
        of trials the study already holds, so a study continued after a stop draws new values
        rather than the first ones again."""
        import optuna

        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
            or optuna.storages.RetryFailedTrialCallback
        callback = "heartbeat_stale_trial_callback" if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback") \
            else "failed_trial_callback"
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                storage, held, directions = self._storage(callback, retry)
                break
            except Exception as e:  # noqa: BLE001 - SQLAlchemy's many ways to fail to connect
                # processes that open a new database together race to create its tables: try again
                if attempt + 1 < STORAGE_ATTEMPTS and type(e).__name__ in ("IntegrityError", "OperationalError") \
                        and "unable to open" not in str(e):
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise ConfigError(f"--storage {shown(self.storage_url)}: cannot open it ({type(e).__name__}: "
                                  f"{one_line(str(e), 200)}); give a database URL Optuna opens, e.g. "
                                  "sqlite:///study.db or postgresql://user@host/db") from None
        if directions is not None and [d.name.lower() for d in directions] != [self.tune.resolved_direction]:
            raise ConfigError(f"--storage {shown(self.storage_url)}: study {self.study_name!r} there is "
                              f"{directions[0].name.lower()}d, this search is {self.tune.resolved_direction}d "
                              "(tune.metric, tune.direction); name another study (tune.study_name) or folder")
        cls, options = _named("sampler", self.tune.sampler, SAMPLERS, self.config_path)
        if options.get("seed") is not None:
            options = {**options, "seed": (int(options["seed"]) + held) % 2**32}
        with _quiet_optuna():
            return optuna.create_study(storage=storage, study_name=self.study_name, load_if_exists=True,
                                       direction=self.tune.resolved_direction, sampler=cls(**options),
                                       pruner=self.pruner)

    def _storage(self, callback: str, retry):
        """Optuna's storage at the URL, with the heartbeat that finds killed trials, and what it holds
        of this study: its number of trials and its directions (None if it is new)."""
        import optuna

        with _quiet_optuna():
            storage = optuna.storages.RDBStorage(self.storage_url, heartbeat_interval=HEARTBEAT_SECONDS,
                                                 grace_period=3 * HEARTBEAT_SECONDS, **{callback: retry()})
            try:
                study_id = storage.get_study_id_from_name(self.study_name)
            except KeyError:
                return storage, 0, None
            return storage, len(storage.get_all_trials(study_id, deepcopy=False)), \
                storage.get_study_directions(study_id)

    def run(self, say: Callable[[str], None] = lambda line: print(line, flush=True)) -> "optuna.Study":  # noqa: F821
        """Run trials until the study holds ``tune.trials`` finished ones (complete or pruned); then
        write the study's files and print the best trials."""
        import optuna

        from pyrovae.training.loop import Interrupted

        made = not self.study_dir.exists()
        try:
            self.study_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.study_dir}: cannot create the study folder ({describe_os_error(e)})") from None
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a line per trial is pyrovae's (reporter)
        try:
            study = self.open_study()
        except ConfigError:
            if made:  # bad input leaves nothing behind
                shutil.rmtree(self.study_dir, ignore_errors=True)
            raise
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        if done >= self.tune.trials:
            say(f"tune: the study {self.study_name!r} already has {done} finished trials (tune.trials = "
                f"{self.tune.trials}); raise --trials to run more")
        else:
            say(f"tune: study {self.study_name!r} in {self.storage_url}: {done} of {self.tune.trials} trials done; "
                f"trials in {self.study_dir}/trial-NNNN")
            stop = optuna.study.MaxTrialsCallback(self.tune.trials, states=finished)
            self.failures: List[str] = []
            with _quiet_optuna():
                try:
                    study.optimize(self.objective, callbacks=[stop, self.reporter(say)], catch=(TrialFailed,))
                except Interrupted as e:
                    raise Interrupted(f"{e}; the study stopped: run the same pyrovae tune command again to "
                                      "continue it (this trial resumes from its checkpoint)", e.signal_number) from None
            if len(self.failures) >= MAX_FAILURES_IN_A_ROW:
                self.write_results(study, say)
                raise PyrovaeError(f"tune: {len(self.failures)} trials in a row failed, so the study stopped; the "
                                   f"last: {self.failures[-1]} (every trial's line is above; trials.csv lists them)")
        self.write_results(study, say)
        return study

    def objective(self, trial) -> float:
        """One trial: its config, its run folder (a requeued trial's own, resumed), trained and scored."""
        import optuna

        from pyrovae.app.run import StoppedAtOnce, train
        from pyrovae.training.loop import Interrupted

        params = {dim.key: dim.suggest(trial) for dim in self.tune.space}
        config = self.trial_config(params)
        run_dir, resume = self.trial_folder(trial)
        trial.set_user_attr(RUN_DIR_ATTR, run_dir.name)
        report = ReportToTrial(trial, self.report_metric(config))
        try:
            with warnings.catch_warnings(record=True) as caught:  # a trial's warnings go on its line
                warnings.simplefilter("always", UserWarning)
                try:
                    train(config, run_dir, resume=resume, callbacks=[report])
                finally:
                    if caught:
                        # its first clause: "epoch 2: only 1 of 8 latent units are active (...)"
                        trial.set_user_attr("warning", one_line(str(caught[0].message).split(";")[0], 160))
        except optuna.TrialPruned:
            raise
        except (Interrupted, StoppedAtOnce, KeyboardInterrupt):
            self.requeue(trial)  # run again, the study resumes this trial's folder
            raise
        except PyrovaeError as e:  # this trial's values do not train (e.g. a non-finite loss): the study goes on
            trial.set_user_attr("error", one_line(str(e), 300))
            raise TrialFailed(str(e)) from None
        if report.best is None:
            raise optuna.TrialPruned(f"no evaluation of {report.metric} (a non-finite value)")
        if self.tune.metric == "test_nll":
            return self.test_nll(run_dir, config)
        return report.best

    def report_metric(self, config) -> str:
        """The record key a trial reports at each evaluation: its ELBO metric, or for test_nll the
        validation ELBO where there is a validation split, else the test ELBO."""
        if self.tune.metric != "test_nll":
            return self.tune.metric
        return "validation_elbo" if config.has_validation() else "test_elbo"

    def trial_folder(self, trial):
        """The trial's run folder, and whether it resumes it: a requeued trial carries the folder of the
        trial it repeats (its user attribute :data:`RUN_DIR_ATTR`), resumed where it is here and holds a
        run; else ``trial-NNNN`` by the trial's number."""
        from pyrovae.app.files import CONFIG

        earlier = trial.user_attrs.get(RUN_DIR_ATTR)
        if isinstance(earlier, str) and re.fullmatch(r"trial-\d+", earlier):
            folder = self.study_dir / earlier
            if (folder / CONFIG).is_file() and not folder.is_symlink():
                return folder, True
        return self.study_dir / f"trial-{trial.number:04d}", False

    @staticmethod
    def requeue(trial) -> None:
        """Queue a stopped trial again, with its values and its folder (which the new trial resumes)."""
        with _quiet_optuna():
            trial.study.enqueue_trial(trial.params, user_attrs={RUN_DIR_ATTR: trial.user_attrs[RUN_DIR_ATTR]})

    def test_nll(self, run_dir: Path, config) -> float:
        from pyrovae.app.files import BEST
        from pyrovae.app.run import evaluate_run

        which = "best" if (run_dir / BEST).is_file() else "last"
        result = evaluate_run(run_dir, nll_samples=self.tune.nll_samples, iwae_samples=1, elbo_particles=1,
                              device=config.train.device, plugins=list(config.plugins.modules), which=which)
        return float(result["test_nll"])

    def reporter(self, say):
        import optuna

        def line(study, trial) -> None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            if trial.state == optuna.trial.TrialState.COMPLETE:
                what = f"{self.tune.metric} {trial.value:.4f}"
            elif trial.state == optuna.trial.TrialState.PRUNED:
                last = max(trial.intermediate_values) if trial.intermediate_values else None
                what = "pruned" + (f" at epoch {last}" if last is not None else "")
            else:
                what = "failed" + (f": {trial.user_attrs.get('error')}" if trial.user_attrs.get("error") else "")
                self.failures.append(trial.user_attrs.get("error") or f"trial {trial.number}")
                if len(self.failures) >= MAX_FAILURES_IN_A_ROW:
                    study.stop()
            if trial.state != optuna.trial.TrialState.FAIL:
                self.failures.clear()
            try:
                best = f"; best: trial {study.best_trial.number} ({study.best_value:.4f})"
            except ValueError:
                best = ""
            warned = f" (warning: {trial.user_attrs['warning']})" if trial.user_attrs.get("warning") else ""
            folder = trial.user_attrs.get(RUN_DIR_ATTR, "-")
            say(f"tune: trial {trial.number} ({folder}) {what} [{params}]{best}{warned}")

        return line

    # -- the study's files ----------------------------------------------------------------------
    def write_results(self, study, say) -> None:
        import optuna

        trials = study.get_trials(deepcopy=False)
        keys = [dim.key for dim in self.tune.space]
        rows = [["number", "state", "value", "run_dir", *keys]]
        for t in trials:
            rows.append([t.number, t.state.name.lower(), "" if t.value is None else repr(t.value),
                         t.user_attrs.get(RUN_DIR_ATTR, ""), *[t.params.get(k, "") for k in keys]])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        atomic_write_bytes(self.study_dir / TRIALS_CSV, lambda f: f.write(text.getvalue().encode()))
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            say("tune: no trial completed yet; no best.toml")
            return
        best = study.best_trial
        document = self.trial_dict(best.params)
        header = (f"# the best trial of study {self.study_name!r}: trial {best.number} "
                  f"({best.user_attrs.get(RUN_DIR_ATTR)}), {self.tune.metric} {best.value:.6g}\n")
        atomic_write_bytes(self.study_dir / BEST_TOML, lambda f: f.write((header + dumps(document)).encode()))
        self.write_figures(study, say)
        reverse = self.tune.resolved_direction == "maximize"
        ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)[:5]
        say(f"tune: best trials ({self.tune.metric}, {self.tune.resolved_direction}d), of {len(complete)} complete, "
            f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)} pruned:")
        say(_table([["trial", self.tune.metric, *keys]]
                   + [[t.number, f"{t.value:.4f}", *[_short(t.params.get(k)) for k in keys]] for t in ranked]))
        say(f"tune: wrote {self.study_dir / BEST_TOML}: pyrovae train {self.study_dir / BEST_TOML}")

    def write_figures(self, study, say) -> None:
        """Optuna's optimization history and parameter importances, as PNG files."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as plots

        for name, draw in ((HISTORY_PNG, plots.plot_optimization_history),
                           (IMPORTANCE_PNG, plots.plot_param_importances)):
            try:
                with _quiet_optuna(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    axes = draw(study)
                    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                    buffer = io.BytesIO()
                    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
                    plt.close(figure)
            except Exception as e:  # noqa: BLE001 - e.g. importances need two complete trials that differ
                say(f"tune: no {name} ({one_line(str(e), 120)})")
                continue
            atomic_write_bytes(self.study_dir / name, lambda f: f.write(buffer.getvalue()))


class TrialFailed(Exception):
    """A trial whose values do not train (a non-finite loss, a size that does not fit): the trial
    fails, with its error as its user attribute ``error``, and the study goes on."""


class ReportToTrial(Callback):
    """Reports ``metric`` to an Optuna trial at every evaluation (the epoch as its step), and prunes
    the trial when Optuna's pruner says so (after the run folder saved the epoch). A resumed run's
    earlier evaluations are reported again first."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        #: the best value reported so far (higher is better: an ELBO)
        self.best: Optional[float] = None

    def on_start(self, trainer) -> None:
        for record in trainer.metrics:  # a resumed run's records
            self.report(record, prune=False)

    def on_epoch_end(self, trainer, record: Dict) -> None:
        self.report(record, prune=True)

    def report(self, record: Dict, prune: bool) -> None:
        import optuna

        value = record.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.best = value if self.best is None else max(self.best, value)
        self.trial.report(value, record["epoch"])
        if prune and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} ({self.metric} {value:.4f})")


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(rows: List[List[Any]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def tune(config_path: str, study_dir, overrides: Sequence[str] = (), plugins: Sequence[str] = (),
         trials: Optional[int] = None, storage: Optional[str] = None, threads: Optional[int] = None):
    """Run (or continue) the search ``config_path``'s ``[tune]`` describes, into ``study_dir``; return
    Optuna's study (see the module's docstring)."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("pyrovae tune needs Optuna: pip install optuna (or pyrovae[tune])") from None
    search = Search(config_path, study_dir, overrides, plugins, trials, storage, threads)
    return search.run()

