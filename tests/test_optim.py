"""Optimizers: the update rules in closed form, and the kernel choice (``implementation``)."""

import copy

import pytest
import torch

from pyrovae import build_optimizer
from pyrovae.errors import ConfigError
from pyrovae.training.optim import IMPLEMENTATIONS, load_state


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]


def _gradients(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(7, 5, generator=g), torch.randn(5, generator=g)]


def _run(spec, steps=5):
    params = _params()
    optimizer = build_optimizer(spec, params)
    for step in range(steps):
        for p, g in zip(params, _gradients(step)):
            p.grad = g.clone()
        optimizer.step()
    return optimizer, [p.detach() for p in params]


@pytest.mark.parametrize("name", ["adam", "adagrad"])
def test_auto_uses_the_fused_kernel_on_the_cpu(name):
    optimizer = build_optimizer({"name": name}, _params())
    assert optimizer.param_groups[0]["fused"] is True


def test_rmsprop_has_no_fused_kernel_so_auto_keeps_torchs_default():
    optimizer = build_optimizer({"name": "rmsprop"}, _params())
    assert optimizer.param_groups[0]["foreach"] is None
    with pytest.raises(ConfigError, match=r"optim 'rmsprop': implementation must be one of auto, foreach, "
                                          r"for_loop; got 'fused'"):
        build_optimizer({"name": "rmsprop", "implementation": "fused"}, _params())


def test_fused_refuses_parameters_it_has_no_kernel_for():
    with pytest.raises(ConfigError, match=r"'fused' needs floating-point parameters on cpu or cuda; got torch.float64"
                                          r" on meta"):
        build_optimizer({"name": "adam", "implementation": "fused"}, [torch.zeros(3, dtype=torch.float64,
                                                                                 device="meta")])
    auto = build_optimizer({"name": "adam"}, [torch.zeros(3, device="meta", requires_grad=True)])
    assert auto.param_groups[0]["fused"] is None  # torch's default where there is no fused kernel


@pytest.mark.parametrize("spec", [{"name": "adam", "lr": 0.01, "weight_decay": 0.1},
                                  {"name": "adam", "lr": 0.01, "amsgrad": True},
                                  {"name": "adagrad", "lr": 0.05, "weight_decay": 0.1},
                                  {"name": "rmsprop", "lr": 0.01, "momentum": 0.5}])
def test_every_implementation_takes_the_same_steps(spec):
    choices = [c for c in IMPLEMENTATIONS if not (spec["name"] == "rmsprop" and c == "fused")]
    results = {c: _run({**spec, "implementation": c})[1] for c in choices}
    for choice, params in results.items():
        for p, q in zip(params, results["for_loop"]):
            assert torch.allclose(p, q, rtol=1e-6, atol=1e-6), choice


@pytest.mark.parametrize("implementation", ["fused", "for_loop"])
def test_adam_and_adagrad_steps_in_closed_form(implementation):
    # Adam's first step: m_hat = g, v_hat = g^2, so theta moves by lr * g / (|g| + eps).
    _, (p, _) = _run({"name": "adam", "lr": 0.1, "implementation": implementation}, steps=1)
    g = _gradients(0)[0]
    assert torch.allclose(p, _params()[0].detach() - 0.1 * g / (g.abs() + 1e-8), atol=1e-6)
    # AdaGrad: theta_t = theta_{t-1} - lr * g_t / (sqrt(sum_{s<=t} g_s^2) + eps).
    _, (p, _) = _run({"name": "adagrad", "lr": 0.1, "implementation": implementation}, steps=3)
    expected, squares = _params()[0].detach(), torch.zeros(7, 5)
    for step in range(3):
        g = _gradients(step)[0]
        squares += g * g
        expected = expected - 0.1 * g / (squares.sqrt() + 1e-10)
    assert torch.allclose(p, expected, atol=1e-6)


def test_a_saved_state_resumes_with_the_resuming_runs_kernels():
    # A run saved by the per-tensor kernel resumes under the fused one (and the other way round)
    # and takes the step the saving optimizer would have taken.
    for saving, resuming in (("for_loop", "auto"), ("fused", "for_loop")):
        saver, params = _run({"name": "adam", "implementation": saving}, steps=2)
        resumed_params = [p.clone().requires_grad_() for p in params]
        resumed = build_optimizer({"name": "adam", "implementation": resuming}, resumed_params)
        load_state(resumed, copy.deepcopy(saver.state_dict()))
        assert resumed.param_groups[0]["fused"] is (True if resuming == "auto" else None)
        for optimizer, ps in ((saver, saver.param_groups[0]["params"]), (resumed, resumed_params)):
            for p, g in zip(ps, _gradients(2)):
                p.grad = g.clone()
            optimizer.step()
        for p, q in zip(saver.param_groups[0]["params"], resumed_params):
            assert torch.allclose(p, q, atol=1e-6)
