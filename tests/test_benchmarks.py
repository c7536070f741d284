"""benchmarks/throughput.py runs, writes the JSON the issue asks for, and scores its loops alike
(no timing is checked here: speed lives in the benchmark's own output)."""

import importlib.util
import json
from pathlib import Path

import torch

import pyrovae
from pyrovae import VAE, dataset_elbo

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)


def _binary(n, seed=0):
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)) < 0.2).float()


def test_the_three_loops_are_scored_by_one_test_elbo():
    x = _binary(300)
    # the hand-written model and the Pyro one with the same weights give the same test ELBO
    torch.manual_seed(0)
    hand = throughput.TorchVAE()
    classic = throughput.PyroVAE()
    for name in ("fc1", "fc21", "fc22"):
        getattr(classic.encoder, name).load_state_dict(getattr(hand, name).state_dict())
    classic.decoder.fc3.load_state_dict(hand.fc3.state_dict())
    classic.decoder.fc4.load_state_dict(hand.fc4.state_dict())
    a = throughput.heldout_elbo((hand.encode, hand.decode), x)
    b = throughput.heldout_elbo((classic.encode, classic.decoder), x)
    assert abs(a - b) < 1e-3, (a, b)
    # pyrovae's codec, scored by the benchmark and by pyrovae's own evaluation (both estimator B)
    net = {"name": "mlp", "hidden": [400], "activation": "relu"}
    vae = VAE((784,), 20, likelihood="bernoulli", encoder=net, decoder=net)
    with torch.no_grad():
        c = throughput.heldout_elbo((vae.encoder, lambda z: vae.decode(z)[0]), x, samples=20)
        d = dataset_elbo(vae, x, num_particles=20)
    assert abs(c - d) < 0.1, (c, d)


def test_quick_run_writes_the_json_fields(tmp_path):
    out = tmp_path / "bench.json"
    args = throughput.parse_args(["--steps", "2", "--repeats", "2", "--memory-epochs", "1", "--quality-epochs", "0",
                                  "--nll", "--nll-images", "2", "--nll-samples", "20", "--json", str(out)])
    throughput.main(args)
    rows = json.loads(out.read_text())
    assert [r["estimator"] for r in rows] == ["analytic", "mc"]
    for r in rows:
        for key in ("device", "batch_size", "estimator", "torch_images_per_s", "pyro_images_per_s",
                    "pyrovae_images_per_s", "pyrovae_vs_torch_time", "pyrovae_vs_pyro_speedup"):
            assert key in r, key
        assert r["pyrovae_vs_torch_time"] == r["torch_images_per_s"] / r["pyrovae_images_per_s"]
        assert len(r["all_runs"]["pyrovae"]) == 2 and all(v > 0 for v in r["all_runs"]["pyrovae"])
        assert len(r["rss_mib_per_epoch"]) == 2 and r["nll_images"] == 2 and r["nll_over_floor"] > 0


def test_the_precision_table_times_each_precision_against_float32(tmp_path):
    out = tmp_path / "precision.json"
    throughput.main(throughput.parse_args(["--precision", "--steps", "2", "--repeats", "2", "--quality-epochs", "0",
                                           "--json", str(out)]))
    rows = json.loads(out.read_text())
    assert [r["precision"] for r in rows] == ["32", "bf16-mixed"]  # 16-mixed only on CUDA
    assert rows[0]["speed_vs_float32"] == 1.0 and all(r["images_per_s"] > 0 and len(r["all_runs"]) == 2 for r in rows)


def test_the_family_loops_run_and_report_their_ratio():
    """``--family``: each family's two loops run on a small stand-in and give a finite ratio."""
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    import families

    x, y = _binary(240), torch.randint(10, (240,), generator=torch.Generator().manual_seed(1))
    data = pyrovae.Dataset("stand-in", x, x[:40], "none", y, y[:40], pyrovae.data.datasets.choose_labeled(y, 30))
    for family in ("cvae", "m2", "amortized"):
        row = families.benchmark(family, data, steps=2, repeats=1, batch_size=40)
        assert row["family"] == family and 0 < row["pyrovae_time_vs_reference"] < float("inf")
