"""Progress on a terminal: the long commands show bars under a real pseudo-terminal that reports
no size (0 columns, 0 lines: such a terminal made tqdm draw nothing), and none where stderr is a file."""

import os
import select
import signal
import sys

import pytest

from pyrovae.app.cli import main
from pyrovae.infer.evaluate import titled_bar
from pyrovae.progress import progress_bar

pty = pytest.importorskip("pty")


def on_a_terminal(argv, timeout=600.0) -> str:
    """What ``python -m pyrovae.app.cli ARGV`` writes to a fresh pseudo-terminal (never sized)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdin, stdout and stderr
        os.execv(sys.executable, [sys.executable, "-m", "pyrovae.app.cli", *argv])
    out = b""
    try:
        while select.select([fd], [], [], timeout)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:  # the child ends with the test, whatever happened: never waited for forever
        os.close(fd)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.killpg(pid, signal.SIGKILL)  # pty.fork's child leads a session (and group) of its own
            os.waitpid(pid, 0)
    return out.decode(errors="replace")


def test_evaluate_shows_a_bar_for_each_estimate_on_a_terminal_that_reports_no_size(tmp_path):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "train.max_steps=3", "-q"]) == 0
    out = on_a_terminal(["evaluate", str(tmp_path / "run"), "--nll-samples", "40", "-k", "2", "--iwae-samples", "4",
                         "--out", str(tmp_path / "e.json")])
    for title in ("ELBO (L=2): ", "IWAE (k=4): ", "NLL (K=40): "):
        assert title in out, out[-2000:]


def test_a_terminal_that_reports_no_size_gets_a_bar_of_80_columns_on_24_lines(monkeypatch):
    """What made tqdm draw nothing: 0 lines hide every bar (training's bar is this one too)."""
    import pyrovae.progress as progress

    with open(os.devnull, "w") as sink:
        monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
        monkeypatch.setattr(progress, "terminal_size", lambda stream=None: (0, 0))
        bar = progress.progress_bar(total=3, file=sink, disable=False)
        assert (bar.ncols, bar.nrows, bar.dynamic_ncols) == (80, 24, False)
        bar.close()
        monkeypatch.setattr(progress, "terminal_size", lambda stream=None: (120, 40))
        bar = progress.progress_bar(total=3, file=sink, disable=False)
        assert bar.dynamic_ncols
        bar.close()
        monkeypatch.setattr(progress, "_is_terminal", lambda stream: False)  # a log file: whole lines
        bar = progress.progress_bar(total=3, file=sink, disable=False)
        assert bar.dynamic_ncols and bar.ncols is None
        bar.close()


def test_no_bar_where_stderr_is_a_file(tmp_path):
    with open(tmp_path / "log", "w") as log:
        assert progress_bar(total=3, file=log).disable
    with titled_bar(None, 3) as bar:
        assert bar is None
