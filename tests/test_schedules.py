"""Learning-rate schedules (optim.schedule): each rate as its formula says, recorded per epoch,
checkpointed and resumed bit for bit, and bad specs refused in one line."""

import json
import math

import pytest
import torch
from conftest import one_line_error

from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main
from pyrovae.training.schedules import build_schedule

SMALL = ["--set", "model.encoder.hidden=[32]", "--set", "model.decoder.hidden=[32]"]


def rates(spec, epochs=6, steps_per_epoch=3, metrics=None, lr=0.1):
    """The rate of each step's update, epoch by epoch, as the loop steps the schedule."""
    p = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([p], lr=lr)
    schedule = build_schedule(spec, optimizer, epochs, steps_per_epoch, True)
    out = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch({"validation_elbo": None if metrics is None else metrics[epoch]})
    return out


def test_each_schedule_gives_the_rate_of_its_formula():
    per_epoch = lambda r: r[::3]  # noqa: E731
    assert rates("constant") == [0.1] * 18
    assert per_epoch(rates({"name": "step", "step_size": 2, "gamma": 0.5})) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert per_epoch(rates({"name": "exponential", "gamma": 0.9})) == pytest.approx([0.1 * 0.9**e for e in range(6)])
    assert per_epoch(rates({"name": "cosine", "eta_min": 0.01})) == pytest.approx(
        [0.01 + 0.09 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)])
    # warm-up over 1 epoch (3 steps) from 0.1 * 0.2, then cosine over the other 15 steps, per step
    got = rates({"name": "warmup_cosine", "warmup_epochs": 1, "start_factor": 0.2})
    want = [0.1 * (0.2 + 0.8 * s / 3) for s in range(3)] + [0.1 * (1 + math.cos(math.pi * (s - 3) / 15)) / 2
                                                           for s in range(3, 18)]
    assert got == pytest.approx(want)
    # plateau: no rise for 2 evaluations (patience 1: the second without) multiplies the rate by 0.5
    got = per_epoch(rates({"name": "plateau", "patience": 1, "factor": 0.5}, metrics=[-5, -4, -4, -4, -3, -3]))
    assert got == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05])


def test_a_cosine_schedule_resumes_bit_for_bit_and_its_rate_is_in_the_metrics(tmp_path):
    common = ["--set", "train.eval_every=2", "--set", "optim.lr=0.003", *SMALL]
    for name in ("cosine", "warmup_cosine"):
        spec = f"optim.schedule={{ name = \"{name}\", eta_min = 0.0001 }}"
        straight, halves = tmp_path / f"{name}-straight", tmp_path / f"{name}-halves"
        assert main(["train", "-q", "--out", str(straight), "--set", "train.epochs=4", "--set", spec, *common]) == 0
        # stopped mid-epoch by a step budget (the per-step schedule mid-way), then resumed to the end
        assert main(["train", "-q", "--out", str(halves), "--set", "train.epochs=4", "--set", "train.max_steps=25",
                     "--set", spec, *common]) == 0
        assert main(["train", "-q", "--out", str(halves), "--resume", "--set", "train.max_steps=0"]) == 0
        a, b = (read_checkpoint(r / "checkpoint.pt") for r in (straight, halves))
        assert a["schedule"] == b["schedule"] and a["counters"] == b["counters"]
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (name, k)
        records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
        assert records == [json.loads(line) | {"train_seconds": r["train_seconds"],
                                               "images_per_second": r["images_per_second"]}
                           for line, r in zip((halves / "metrics.jsonl").read_text().splitlines(), records)]
        lr = [r["learning_rate"] for r in records]
        if name == "cosine":  # the rate each epoch trained with
            assert lr == pytest.approx([1e-4 + (3e-3 - 1e-4) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
        else:
            assert lr[0] > lr[1] > lr[2] > lr[3] > 1e-4


@pytest.mark.parametrize("schedule, pattern", [
    ("\"sawtooth\"", r"optim.schedule: unknown schedule 'sawtooth'; valid: constant, cosine, exponential, plateau"),
    ("{ name = \"cosine\", tmax = 3 }", r"optim.schedule.tmax: unknown option of schedule 'cosine' \(did you mean "
                                       r"'t_max'\?\); valid options: "),
    ("{ name = \"step\", gamma = -1 }", r"optim.schedule 'step': gamma must be > 0, got -1"),
    ("{ name = \"plateau\", metric = \"validation_elbo\" }", r"metric 'validation_elbo' needs a validation split"),
    ("{ name = \"warmup_cosine\", warmup_epochs = 50 }", r"warmup_epochs must be in \[0, t_max = 50\)"),
])
def test_bad_schedules_are_one_line(tmp_path, capsys, schedule, pattern):
    err = one_line_error(capsys, main(["train", "-q", "--out", str(tmp_path / "r"), "--set",
                                       f"optim.schedule={schedule}"]))
    assert __import__("re").search(pattern, err), err
    assert not (tmp_path / "r").exists()


def test_a_run_resumes_only_with_its_own_schedule(trained, capsys):
    err = one_line_error(capsys, main(["train", "-q", "--out", str(trained), "--resume", "--set",
                                       "optim.schedule=\"cosine\"", "--set", "train.epochs=3"]))
    assert "the run was made with another optim.schedule" in err
