"""A validation split, early stopping and the best checkpoint: a fixed held-out share of the
training split, validation_elbo at every evaluation, a run that stops when it stops improving,
best.pt (as checked as the checkpoint), evaluate --which best, and a resume with more patience."""

import json

import numpy as np
import pytest
import torch
from conftest import one_line_error

import pyrovae
from pyrovae import load_dataset
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main
from pyrovae.training.early_stopping import best_so_far

SMALL = ["--set", "model.encoder.hidden=[32]", "--set", "model.decoder.hidden=[32]"]


def test_the_validation_split_is_a_fixed_share_of_the_training_split_and_labels_come_from_the_rest():
    whole = load_dataset("digits", binarize="none")
    a = load_dataset("digits", validation_fraction=0.2, labeled=50, binarize="none")
    b = load_dataset("digits", validation_fraction=0.2)
    n = whole.num_train
    assert len(a.validation_split) == round(0.2 * n) and a.num_train == n - round(0.2 * n)
    # together they are the whole training split, each point once (its labels a permutation of the whole's)
    torch.testing.assert_close(a.train[:].sum(0) + a.validation_split[:].sum(0), whole.train[:].sum(0))
    labels = torch.cat([a.train_y, a.validation_split.labels]).sort().values
    assert torch.equal(labels, whole.train_y.sort().values)
    # the same points whatever else is set (a label budget, binarization); binarized once, like the test split
    assert torch.equal(a.validation_split.labels, b.validation_split.labels)
    assert torch.equal(a.validation_split[:] > 0.5, load_dataset("digits", validation_fraction=0.2,
                                                                   binarize="threshold").validation_split[:] > 0.5)
    assert set(b.validation_split[:].unique().tolist()) == {0.0, 1.0}
    assert a.labeled.shape == (a.num_train,) and int(a.labeled.sum()) == 50
    with pytest.raises(pyrovae.DataError, match="validation_fraction = 1.5"):
        load_dataset("digits", validation_fraction=1.5)


def test_best_so_far_counts_evaluations_without_an_improvement_beyond_min_delta():
    records = [{"epoch": e, "validation_elbo": v} for e, v in
               enumerate([-30.0, None, -29.0, -28.95, -28.0, -28.5, -28.1], 1)]
    best = best_so_far(records, "validation_elbo")
    assert (best.value, best.epoch, best.since) == (-28.0, 5, 2)
    best = best_so_far(records, "validation_elbo", min_delta=0.5)  # -28.95 is not 0.5 better than -29
    assert (best.value, best.epoch, best.since) == (-28.0, 5, 2)
    best = best_so_far(records, "validation_elbo", min_delta=1.5)  # -28.0 is 2 better than -30
    assert (best.value, best.epoch, best.since) == (-28.0, 5, 2)
    best = best_so_far(records, "validation_elbo", min_delta=2.5)
    assert (best.value, best.epoch, best.since) == (-30.0, 1, 5)
    assert best_so_far([{"epoch": 1, "validation_elbo": None}], "validation_elbo") is None


def test_a_run_stops_early_keeps_best_pt_evaluates_it_and_resumes_with_more_patience(tmp_path, capsys):
    run = tmp_path / "run"
    stopping = "train.early_stopping={ patience = 2, min_delta = 0.4 }"
    assert main(["train", "-q", "--out", str(run), "--set", "train.epochs=30", "--set", "train.eval_every=1",
                 "--set", "data.validation_fraction=0.1", "--set", stopping, *SMALL]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["validation_elbo"] is not None and r["validation_elbo"] < 0 for r in records)
    best = best_so_far(records, "validation_elbo", 0.4)
    stopped = records[-1]["epoch"]
    assert stopped < 30 and best.since == 2 and stopped == best.epoch + 2
    assert f"stopped early after epoch {stopped}" in err and f"was at epoch {best.epoch}" in err
    assert f"stopped early: best validation_elbo {best.value:.2f} at epoch {best.epoch}" in out
    assert f"run folder: {run}" in out and f"evaluate {run} --which best" in out

    # best.pt is the best epoch's whole state, read through the same checks as checkpoint.pt
    kept = read_checkpoint(run / "best.pt")
    assert kept["counters"]["epoch"] == best.epoch and len(kept["metrics"]) == best.epoch
    assert kept["metrics"][-1]["validation_elbo"] == best.value
    last = pyrovae.load(run)
    chosen = pyrovae.load(run, which="best")
    assert any(not torch.equal(a, b) for a, b in zip(last.state_dict().values(), chosen.state_dict().values()))
    assert main(["evaluate", str(run), "--which", "best", "-q", "--nll-samples", "20", "--iwae-samples", "5",
                 "-k", "2"]) == 0
    scores = json.loads((run / "evaluation_best.json").read_text())
    assert scores["checkpoint"] == "best" and scores["epoch"] == best.epoch
    assert abs(scores["test_elbo"] - kept["metrics"][-1]["test_elbo"]) < 1.0
    assert not (run / "evaluation.json").exists()
    capsys.readouterr()

    # the same patience: nothing more to do; a larger one: the run continues from its last checkpoint
    assert main(["train", "-q", "--out", str(run), "--resume"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == stopped
    assert "stopped early" in capsys.readouterr().out
    assert main(["train", "-q", "--out", str(run), "--resume", "--set", "train.epochs=" + str(stopped + 3),
                 "--set", "train.early_stopping.patience=50"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, stopped + 4))
    assert "stopped early" not in capsys.readouterr().out


@pytest.mark.parametrize("sets, pattern", [
    (["train.early_stopping={ patience = 3 }"],
     r"train.early_stopping.metric = 'validation_elbo' needs a validation split: set data.validation_fraction"),
    (["train.early_stopping={ metric = \"test_elbo\", patience = 0 }"], r"train.early_stopping.patience = 0: must be"),
    (["train.early_stopping={ metric = \"loss\" }"], r"train.early_stopping.metric = 'loss': valid: validation_elbo"),
    (["train.early_stopping={ patients = 3 }"],
     r"train.early_stopping.patients: unknown key \(did you mean 'patience'\?\); valid keys: metric"),
    (["data.validation_fraction=1.0"], r"data.validation_fraction = 1.0: must be in \[0, 1\)"),
])
def test_bad_early_stopping_settings_are_one_line(tmp_path, capsys, sets, pattern):
    args = [x for s in sets for x in ("--set", s)]
    err = one_line_error(capsys, main(["train", "-q", "--out", str(tmp_path / "r"), *args]))
    assert err.startswith(f"pyrovae: error: --set {sets[-1]}: ") and __import__("re").search(pattern, err), err
    assert not (tmp_path / "r").exists()


def test_which_best_without_a_best_checkpoint_is_one_line(trained, capsys):
    err = one_line_error(capsys, main(["evaluate", str(trained), "--which", "best"]))
    assert "best.pt: no best checkpoint here; a run keeps best.pt when it has a validation split" in err
    with pytest.raises(pyrovae.RunDirError, match="which = 'first': valid: last, best"):
        pyrovae.load(trained, which="first")


def test_encode_writes_the_posterior_means_of_a_split_with_their_labels(trained, tmp_path, capsys):
    out = tmp_path / "latents.npz"
    assert main(["encode", str(trained), "--out", str(out)]) == 0
    assert f"wrote {out}: latents (180, 2), labels (180,)" in capsys.readouterr().out
    saved = np.load(out)
    vae, data = pyrovae.load(trained), load_dataset("digits")
    torch.testing.assert_close(torch.from_numpy(saved["latents"]), vae.encode(data.test_batch), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(saved["labels"], data.test_y.numpy())
    assert main(["encode", str(trained), "--split", "train", "--out", str(out)]) == 0
    assert np.load(out)["latents"].shape == (data.num_train, 2)
    err = one_line_error(capsys, main(["encode", str(trained), "--split", "validation", "--out", str(out)]))
    assert "--split validation: valid for this run: train, test" in err
    err = one_line_error(capsys, main(["encode", str(trained), "--out", str(tmp_path / "latents.csv")]))
    assert "latents.csv: must be a .npz file" in err
