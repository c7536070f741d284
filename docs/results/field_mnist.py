"""Run the field's MNIST rows (examples/configs/field/*.toml) in order and write docs/results/field_mnist.csv.

    python docs/results/field_mnist.py --data ../shared/data/static_mnist --runs runs/field --threads 1

Each row is one shipped config at the protocol of Tomczak & Welling, "VAE with a VampPrior" (2018),
trained by ``pyrovae train`` into ``RUNS/<row>`` and scored by ``pyrovae evaluate --which best``
(the best epoch by the validation ELBO, the test NLL with 5000 importance samples). Run it again
after an interruption (Ctrl-C, a signal, a lost machine) and each row goes on where it stopped:
a row with a run folder is resumed from its checkpoint (``pyrovae train --resume``, bit for bit: the
checkpoint holds the model, the optimizer, every random state and the data order), a finished
row is evaluated once, and an evaluated row is only read. The CSV keeps the rows of other runs
(another machine's, a GPU's) and replaces those scored here; ``docs/results/field_mnist.md``, the
table the page docs/field.md shows, is written from it (``--table-only`` writes only that).

A row trained with ``--set`` (a smaller budget, another seed) is marked ``reduced: <keys>`` in the
``protocol`` column and does not count as reaching the paper's number. The wall time is the
runner's own clock over every training and evaluation command of the row, summed across
interruptions (``RUNS/<row>.seconds``); the runner writes nothing into the run folders but
what ``pyrovae`` itself writes.
"""

import argparse
import csv
import ctypes
import dataclasses
import fcntl
import io
import json
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pyrovae  # (its API, torch and Pyro load at the first use: a row's table line)
from pyrovae.app.files import atomic_write_bytes

REPOSITORY = Path(__file__).resolve().parents[2]
CONFIGS = REPOSITORY / "examples" / "configs" / "field"
CSV = REPOSITORY / "docs" / "results" / "field_mnist.csv"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: its config, what it is, and the numbers it is compared with."""

    name: str       # examples/configs/field/<name>.toml, and the run folder's name
    model: str
    prior: str
    paper_nll: float
    target_nll: float
    pythae_nll: Optional[float] = None


#: the rows in the order they run; the paper's values are Table 2 (static MNIST, MLPs, L = 1 and 2)
ROWS = (
    Row("vae_static_mnist", "VAE", "standard normal", 88.56, 88.9, pythae_nll=89.78),
    Row("vampprior_static_mnist", "VAE", "VampPrior (K = 500)", 85.57, 85.9, pythae_nll=85.79),
    Row("hvae_static_mnist", "HVAE (2 levels)", "standard normal", 86.05, 86.35),
    Row("hvae_vampprior_static_mnist", "HVAE (2 levels)", "VampPrior (K = 500)", 83.19, 83.49),
)

#: train keys that do not change what a row computes
NOT_PROTOCOL = {"device", "num_threads", "progress"}

FIELDS = ("row", "model", "prior", "data", "protocol", "epochs_trained", "best_epoch", "test_nll", "paper_nll",
          "difference", "target_nll", "reached", "pythae_nll", "test_elbo_best", "wall_hours", "device", "threads",
          "seed", "torch", "command")


def pyrovae_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "pyrovae", *args]


class WallClock:
    """The seconds spent on one row, summed over the runner's invocations (``RUNS/<row>.seconds``,
    beside the run folder, one file per row so that rows run side by side keep their own), written
    every minute while a command runs, so that a runner killed outright loses a minute at most."""

    SAVE_EVERY = 60.0

    def __init__(self, runs: Path, row: str):
        self.path = runs / f"{row}.seconds"
        self.seconds = float(self.path.read_text()) if self.path.is_file() else 0.0

    def run(self, command: Sequence[str]) -> int:
        """Run ``command`` to its end; a SIGINT or SIGTERM the runner gets is passed on to it, once (it
        runs in a session of its own, so that a terminal's Ctrl-C reaches it through the runner only),
        and ``pyrovae`` then saves where it is and stops."""
        before, start = self.seconds, time.monotonic()
        process = subprocess.Popen(command, start_new_session=True, preexec_fn=ended_with_parent)
        forward = {number: signal.signal(number, lambda received, frame: process.send_signal(received))
                   for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                try:
                    return process.wait(timeout=self.SAVE_EVERY)
                except subprocess.TimeoutExpired:
                    self._save(before + time.monotonic() - start)
        finally:
            for number, handler in forward.items():
                signal.signal(number, handler)
            self._save(before + time.monotonic() - start)

    def _save(self, seconds: float) -> None:
        self.seconds = seconds
        atomic_write_bytes(self.path, lambda f: f.write(f"{seconds:.1f}\n".encode()))


def ended_with_parent() -> None:
    """In the child, before it runs: on Linux, a SIGTERM to it when the runner ends, however it ends
    (killed outright too), so that ``pyrovae`` saves where it is and no run goes on unwatched."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def protocol(row: Row, run: Path, configs: Path) -> str:
    """``paper`` where the run's config is the shipped one (but for the device and threads), else
    ``reduced: `` and the keys that differ; ``own config`` for a row from another folder of configs."""
    if configs.resolve() != CONFIGS:
        return "own config"
    shipped = pyrovae.load_config(str(CONFIGS / f"{row.name}.toml")).to_dict()
    recorded = pyrovae.load_config(str(run / "config.toml")).to_dict()
    differ = [f"{section}.{key}" for section in ("model", "train", "optim")
              for key in sorted(set(shipped[section]) | set(recorded[section]))
              if not (section == "train" and key in NOT_PROTOCOL)
              and shipped[section].get(key) != recorded[section].get(key)]
    return "paper" if not differ else "reduced: " + " ".join(differ)


def table_row(row: Row, run: Path, wall: float, threads: int, configs: Path) -> Dict:
    config = pyrovae.load_config(str(run / "config.toml"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluation = json.loads((run / "evaluation_best.json").read_text())
    best = next(m for m in metrics if m["epoch"] == evaluation["epoch"])  # the epoch best.pt holds
    kind = protocol(row, run, configs)
    nll = round(evaluation["test_nll"], 2)
    return {"row": row.name, "model": row.model, "prior": row.prior, "data": config.data.name, "protocol": kind,
            "epochs_trained": metrics[-1]["epoch"], "best_epoch": evaluation["epoch"], "test_nll": nll,
            "paper_nll": row.paper_nll, "difference": round(nll - row.paper_nll, 2), "target_nll": row.target_nll,
            "reached": "yes" if kind == "paper" and nll <= row.target_nll else "no",
            "pythae_nll": "" if row.pythae_nll is None else row.pythae_nll,
            "test_elbo_best": round(best["test_elbo"], 2) if best.get("test_elbo") is not None else "",
            "wall_hours": round(wall / 3600, 2), "device": config.train.device, "threads": threads,
            "seed": config.train.seed, "torch": version("torch").split("+")[0],
            "command": f"python docs/results/field_mnist.py --data DATA --rows {row.name} --threads {threads}"
                       + ("" if kind == "paper" else " --set ...")}


def write_csv(path: Path, scored: Dict[str, Dict], runs: Path) -> None:
    """The rows scored now replace their old lines; the others stay; the order is :data:`ROWS`'; then
    the markdown table beside it.
    Runners of other rows into the same ``runs`` wait for each other (``runs/.csv.lock``)."""
    with (runs / ".csv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge_csv(path, scored)


def markdown_table(lines: Dict[str, Dict]) -> str:
    """The page's table (docs/field.md includes it): every row of :data:`ROWS`, ours where the CSV
    has it, beside the paper's and pythae's values."""
    out = ["| model | prior | paper | pythae | pyrovae | difference | target | reached | epochs (best) "
           "| protocol | hours | device, threads |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | --- |"]
    for row in ROWS:
        pythae = "" if row.pythae_nll is None else f"{row.pythae_nll:.2f}"
        line = lines.get(row.name)
        if line is None:
            out.append(f"| {row.model} | {row.prior} | {row.paper_nll:.2f} | {pythae} | not run to its end yet "
                       f"| | {row.target_nll:.2f} | | | | | |")
            continue
        out.append(f"| {row.model} | {row.prior} | {row.paper_nll:.2f} | {pythae} | {float(line['test_nll']):.2f} "
                   f"| {float(line['difference']):+.2f} | {row.target_nll:.2f} | {line['reached']} "
                   f"| {line['epochs_trained']} ({line['best_epoch']}) | {line['protocol']} "
                   f"| {float(line['wall_hours']):.1f} | {line['device']}, {line['threads']} |")
    return "\n".join(out) + "\n"


def read_csv(path: Path) -> Dict[str, Dict]:
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {line["row"]: line for line in csv.DictReader(f)}


def _merge_csv(path: Path, scored: Dict[str, Dict]) -> None:
    merged = {**read_csv(path), **scored}
    order = [r.name for r in ROWS] + sorted(set(merged) - {r.name for r in ROWS})
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(merged[name] for name in order if name in merged)
    atomic_write_bytes(path, lambda f: f.write(text.getvalue().encode()))
    write_table(path)


def write_table(path: Path) -> None:
    """The CSV's table as markdown, beside it (``<csv>.md``)."""
    table = markdown_table(read_csv(path)).encode()
    atomic_write_bytes(path.with_suffix(".md"), lambda f: f.write(table))


def run_row(row: Row, args) -> Dict:
    """Train (or resume) and evaluate one row; its table line (:class:`RowStopped` where a command
    did not end)."""
    run, clock = args.runs / row.name, WallClock(args.runs, row.name)
    best, evaluation = run / "best.pt", run / "evaluation_best.json"
    if evaluation.is_file() and evaluation.stat().st_mtime >= (run / "checkpoint.pt").stat().st_mtime:
        return table_row(row, run, clock.seconds, args.threads, args.configs)  # scored: only read
    threads = ["--threads", str(args.threads)]
    device = ["--set", f"train.device={args.device}"]
    if not (run / "config.toml").is_file():
        data = [f"data.path={args.data}"] if args.data else []
        sets = [item for s in [*data, *args.set] for item in ("--set", s)]
        command = pyrovae_command("train", str(args.configs / f"{row.name}.toml"), "-o", str(run), "-q",
                                  *threads, *device, *sets)
    else:
        command = pyrovae_command("train", "-o", str(run), "--resume", "-q", *threads, *device)
    run_to_the_end(clock, row, command)
    if not evaluation.is_file() or evaluation.stat().st_mtime < best.stat().st_mtime:
        command = pyrovae_command("evaluate", str(run), "--which", "best", "--nll-samples", str(args.nll_samples),
                                  "-q", *threads, "--device", args.device)
        run_to_the_end(clock, row, command)
    return table_row(row, run, clock.seconds, args.threads, args.configs)


class RowStopped(Exception):
    """A row's command ended before its end: ``status`` is its exit status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


INTERRUPTED = {128 + signal.SIGINT, 128 + signal.SIGTERM}  # pyrovae saved where it was, and exits so


def run_to_the_end(clock: WallClock, row: Row, command: Sequence[str]) -> None:
    """Run a row's command; an interruption or a failure is :class:`RowStopped`, saying which."""
    print(f"field_mnist: {row.name}: {' '.join(command[2:])}", flush=True)
    status = clock.run(command)
    if status in INTERRUPTED or status < 0:
        raise RowStopped(status, f"field_mnist: {row.name} stopped; run the same command again to resume it")
    if status != 0:
        raise RowStopped(status, f"field_mnist: {row.name}: {command[3]} failed with exit status {status} "
                                 "(its message is above); nothing was scored")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the folder of binarized_mnist_{train,valid,test}.amat (default: the "
                                       "configs' data.path, data/static_mnist, where they are downloaded when missing)")
    parser.add_argument("--runs", type=Path, default=Path("runs/field"), help="where the rows' run folders go")
    parser.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], default=[r.name for r in ROWS])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an override for a new row (marks it reduced: not the paper's protocol)")
    parser.add_argument("--csv", type=Path, default=CSV)
    parser.add_argument("--configs", type=Path, default=CONFIGS,
                        help="the folder of the rows' configs (<row>.toml; default examples/configs/field; "
                             "another folder's rows are marked 'own config')")
    parser.add_argument("--table-only", action="store_true", help="only write the CSV's markdown table (<csv>.md)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.table_only:
        write_table(args.csv)
        return 0
    args.runs.mkdir(parents=True, exist_ok=True)
    scored = {}
    try:
        for row in (r for r in ROWS if r.name in args.rows):
            try:
                line = run_row(row, args)
            except RowStopped as e:
                print(e, file=sys.stderr)
                return e.status if e.status > 0 else 128 - e.status
            scored[row.name] = line
            print(f"field_mnist: {row.name}: test NLL {line['test_nll']} nats (paper {row.paper_nll}, "
                  f"{line['protocol']})", flush=True)
    finally:
        if scored:
            write_csv(args.csv, scored, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
