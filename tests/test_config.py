"""Config: every kind of bad input is one clear error naming file, key and what is allowed."""

import pytest

from pyrovae import Config, ConfigError, load_config
from pyrovae.app.config_files import config_from_dict
from pyrovae.app.overrides import apply_overrides
from pyrovae.app.tomlfile import dumps


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, pattern", [
    ("[train\nepochs = 3", r"c\.toml: malformed TOML"),
    ("[trian]\nepochs = 3", r"c\.toml: \[trian\]: unknown section \(did you mean 'train'\?\); valid: data, model, "
                             r"train, log, plugins, optim"),
    ("[train]\nepoch = 3", r"c\.toml: train\.epoch: unknown key \(did you mean 'epochs'\?\); valid keys: .*epochs"),
    ("[train]\nepochs = \"three\"", r"train\.epochs = 'three': expected an integer"),
    ("[train]\nepochs = 0", r"train\.epochs = 0: must be >= 1"),
    ("[train]\nbatch_size = 2.5", r"train\.batch_size = 2\.5: expected an integer"),
    ("[train]\nprogress = 1", r"train\.progress = 1: expected true or false"),
    ("[train]\nestimator = \"iwae2\"", r"train\.estimator = 'iwae2': valid: auto, analytic, iwae, mc"),
    ("[train]\ndevice = \"tpu\"", r"train\.device = 'tpu': valid: cpu, cuda, cuda:N"),
    ("[data]\nname = \"cifar\"",
     r"data\.name: unknown data set 'cifar' \(did you mean 'cifar10'\?\); valid: celeba, cifar10, digits, "
     r"fashion_mnist, file, frey_face, kmnist, "
     r"mnist, static_mnist, svhn"),
    ("[data]\nbinarize = \"yes\"", r"data\.binarize = 'yes': valid: dynamic, threshold, none"),
    ("[data]\ntest_fraction = 1.5", r"data\.test_fraction = 1\.5: must be in \(0, 1\)"),
    ("[data]\nname = \"file\"", r"data\.path: required"),
    ("[model]\nprior = \"vamp2\"",
     r"model\.prior: unknown prior 'vamp2' \(did you mean 'vamp'\?\); valid: flow, gaussian, mixture, "
     r"standard_normal, vamp"),
    ("[model]\nlikelihood = \"multinomial\"",
     r"model\.likelihood: unknown likelihood 'multinomial'; valid: bernoulli, "),
    ("[model]\nlikelihood = { name = \"gaussian\", sigma = 2.0 }", r"model\.likelihood\.sigma: unknown option"),
    ("[model]\nencoder = { hidden = [10] }", r"model\.encoder: a table needs a 'name'; valid names: conv, mlp"),
    ("[model]\nlatent_dim = 0", r"model\.latent_dim = 0: must be >= 1"),
    ("[optim]\nname = \"sgd\"", r"optim: unknown optimizer 'sgd'; valid: adagrad, adam, clipped_adam, rmsprop"),
    ("[optim]\nlr = -1.0", r"optim\.lr = -1\.0: must be > 0"),
    ("[optim]\nname = \"adagrad\"\nbetas = [0.9, 0.99]", r"optim\.betas: unknown option of optimizer 'adagrad'"),
    ("[optim]\nbetas = [0.9, 1.5]", r"optim 'adam': betas must be two numbers in \[0, 1\)"),
    ("[optim]\nname = \"rmsprop\"\nimplementation = \"fused\"",
     r"optim 'rmsprop': implementation must be one of auto, foreach, for_loop; got 'fused'"),
])
def test_config_errors_name_file_key_and_choices(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "nope.toml"))


def test_defaults_and_round_trip(tmp_path):
    cfg = load_config(None)
    assert cfg.data.name == "digits" and cfg.model.prior == "standard_normal"
    cfg.model.prior = {"name": "mixture", "num_components": 4, "spread": 1.5}
    cfg.optim = {"name": "clipped_adam", "lr": 1e-4, "betas": [0.8, 0.9]}
    again = load_config(write(tmp_path, dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


def test_overrides_reach_any_key_and_part_options():
    cfg = load_config(None, ["train.epochs=3", "data.name=mnist", "model.prior=mixture",
                             "model.prior.num_components=5", "model.encoder.hidden=[64, 32]", "optim.lr=0.01"])
    assert cfg.train.epochs == 3 and cfg.data.name == "mnist" and cfg.optim["lr"] == 0.01
    assert cfg.model.prior == {"name": "mixture", "num_components": 5}
    assert cfg.model.encoder == {"name": "mlp", "hidden": [64, 32], "activation": "relu"}
    cfg = load_config(None, ["model.likelihood=gaussian", "model.likelihood.learn_scale=true"])
    assert cfg.model.likelihood == {"name": "gaussian", "learn_scale": True}


@pytest.mark.parametrize("override, pattern", [
    ("train.epochs", "expected section.key=value"),
    ("epochs=3", "expected section.key=value"),
    ("train.epochs=-2", "must be >= 1"),
    ("train.epochs.x=1", r"train.epochs = \{'x': 1\}: expected an integer"),
    ("train.epochs=3", None),
])
def test_bad_overrides(override, pattern):
    if pattern is None:  # the same path with a good value passes
        assert load_config(None, [override]).train.epochs == 3
        return
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_part_option_of_wrong_likelihood_is_rejected():
    with pytest.raises(ConfigError, match="unknown option of likelihood 'bernoulli'"):
        load_config(None, ["model.likelihood.learn_scale=true"])


def test_config_from_dict_accepts_partial_sections():
    cfg = config_from_dict({"train": {"epochs": 2}})
    assert isinstance(cfg, Config) and cfg.train.epochs == 2 and cfg.train.batch_size == 100
    assert apply_overrides({}, ["optim.name=rmsprop"]) == {"optim": {"name": "rmsprop"}}


@pytest.mark.parametrize("text, pattern", [
    ("[optim]\nlr = nan", r"optim\.lr = nan: expected a finite number"),
    ("[train]\nbeta = inf", r"train\.beta = inf: expected a finite number"),
    ("[train]\nseed = 4294967296", r"train\.seed = 4294967296: must be in \[0, 2\^32\)"),
    ("[model]\nlikelihood = { name = \"gaussian\", scale = -inf }", r"likelihood\.scale = -inf: expected a finite"),
])
def test_non_finite_and_out_of_range_numbers(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))
