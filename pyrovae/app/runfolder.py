"""The run folder as a callback of the loop: RunFolder (checkpoints, metrics, figures); the trackers
beside it (TensorBoard, MLflow) are in :mod:`pyrovae.app.tracking`."""

import sys
from pathlib import Path
from typing import Dict, Optional

from tqdm.auto import tqdm

from pyrovae.app.checkpoint import read_checkpoint, save_checkpoint
from pyrovae.app.config import Config
from pyrovae.app.files import BEST, CHECKPOINT, append_metrics, write_metrics
from pyrovae.app.fingerprint import data_fingerprint, fingerprint_difference
from pyrovae.errors import RunDirError, as_typed, one_line, shell_word
from pyrovae.training.callbacks import Callback
from pyrovae.training.records import EpochRecord

#: the test points the figures draw (reconstructions: the first 20)
FIGURE_POINTS = 20


class RunFolder(Callback):
    """The run folder around the loop (see the module docstring). ``config`` is the resolved run
    config the checkpoint records; ``resume`` continues from the folder's checkpoint (or from the
    start, when it has none yet)."""

    def __init__(self, run_dir, config: Config, resume: bool = False):
        self.run_dir, self.config, self.resume = Path(run_dir), config, resume
        self.saved_epoch: Optional[int] = None
        self.writes = True
        self.fingerprint = None
        #: whether the last metrics record is a partial epoch's (train.max_steps), to be replaced
        self.partial_written = False
        #: whether a stop now loses no work: before the loop's first step (the checks, the data's
        #: hash) and after its last checkpoint (the figures remain); a signal then stops at once
        self.nothing_to_save = True

    def on_start(self, trainer) -> None:
        self.writes = trainer.rank == 0
        #: the data's shapes and hash, recorded in every checkpoint; --resume and evaluate compare them
        self.fingerprint = data_fingerprint(trainer.data)
        checkpoint = self.run_dir / CHECKPOINT
        if self.resume and checkpoint.exists():
            state = read_checkpoint(checkpoint)
            differs = fingerprint_difference(state["data"], self.fingerprint)
            if differs:
                raise RunDirError(f"{checkpoint}: the data differ from the data it was trained on: {differs}; "
                                  "resume with the same data, or start a new run")
            try:
                trainer.restore(state, checkpoint)
            except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as e:  # e.g. RNG states
                raise RunDirError(f"{checkpoint}: malformed checkpoint: its training state does not fit the run "
                                  f"({type(e).__name__}: {one_line(str(e), 120)})") from None
            trainer.metrics = [EpochRecord.current(r) for r in state["metrics"]]
            last = trainer.metrics[-1] if trainer.metrics else None
            self.partial_written = last is not None and not trainer.is_whole(last)
            self.saved_epoch = trainer.counters["epoch"]
        if self.resume and self.writes:
            # metrics.jsonl may lack the checkpoint's last epoch, or hold epochs past it or a torn
            # line (a kill, a full disk): the checkpoint's records replace it, atomically.
            write_metrics(self.run_dir, trainer.metrics)
        self.nothing_to_save = False  # the steps begin: a signal saves the step it stops at

    def failure_note(self) -> str:
        return f"; {self.kept()}" if self.saved_epoch is not None else "; no checkpoint was written yet"

    def save(self, trainer, best: bool = False) -> None:
        """Write the checkpoint (with the metrics records so far); ``best``: as ``best.pt`` too."""
        if self.writes:
            save_checkpoint(self.run_dir / CHECKPOINT, trainer.state(), trainer.model.event_shape, self.config,
                            self.fingerprint, trainer.metrics, self.failure_note(), trainer.data.num_classes,
                            copies=(self.run_dir / BEST,) if best else ())
            self.saved_epoch = trainer.counters["epoch"]

    def on_epoch_end(self, trainer, record: Dict) -> None:
        # The checkpoint (which holds the records) first, then the metrics line: after a kill
        # or a write failure between the two, --resume rebuilds metrics.jsonl from the checkpoint.
        # The best epoch's state is best.pt, the same bytes (checked alike when opened).
        self.save(trainer, best=trainer.is_best(record))
        if self.writes:
            if self.partial_written:  # the epoch's record replaces that of its first part (train.max_steps)
                write_metrics(self.run_dir, trainer.metrics)
            else:
                append_metrics(self.run_dir, record, self.failure_note())
        self.partial_written = not trainer.is_whole(record)

    def on_interrupt(self, trainer, mid_epoch: bool) -> Optional[str]:
        resume = as_typed(f"pyrovae train --out {shell_word(self.run_dir)} --resume")
        if mid_epoch:
            self.save(trainer)
            return f"checkpoint saved: resume with {resume}"
        return f"checkpoint of epoch {trainer.counters['epoch']} saved: resume with {resume}"

    def on_end(self, trainer) -> None:
        self.nothing_to_save = True
        if not self.writes:
            return
        # a figure that cannot be drawn is a warning
        from pyrovae.app.plots import LATENT_POINTS, plot_run

        notes = []
        standardization = getattr(trainer.data, "standardization", None)
        plot_run(self.run_dir, trainer.model, trainer.data.test_head(FIGURE_POINTS), trainer.metrics,
                 trainer.data.test_head(LATENT_POINTS), notes, undo=standardization and standardization.undo)
        if trainer.cfg.progress:  # what was left out, and why (a quiet run says nothing but errors)
            for note in notes:
                tqdm.write(f"pyrovae: {note}", file=sys.stderr)

    def kept(self) -> Optional[str]:
        if self.saved_epoch is None:
            return None
        return f"the last good checkpoint (epoch {self.saved_epoch}) is kept in {self.run_dir}"
