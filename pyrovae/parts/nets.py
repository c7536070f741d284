"""Encoder and decoder networks, found by name (``mlp``, ``conv``).

Encoder: x of shape ``(M, *event_shape)`` -> ``(loc, log_var)``, each ``(M, latent_dim)``:
the parameters of q_phi(z|x) = N(loc, diag(exp(log_var))) (Kingma & Welling 2014, App. C.2,
where the encoder emits mu and log sigma^2).

Decoder: z of shape ``(..., latent_dim)`` (any leading dims: particles, batch) ->
``(..., num_params, *event_shape)``, the likelihood's raw parameters.
"""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from pyrovae.registry import Registry, check_choice

ENCODERS = Registry("encoder", context=("event_shape", "latent_dim"))
"""Encoders by name (``model.encoder``): networks x -> (mu, log sigma^2), built with ``event_shape`` and
``latent_dim`` and the spec's options (``input = "log1p"`` for counts).
"""
DECODERS = Registry("decoder", context=("event_shape", "latent_dim", "num_params"))
"""Decoders by name (``model.decoder``): networks z -> the likelihood's ``num_params`` values per data value,
built with ``event_shape``, ``latent_dim`` and ``num_params`` and the spec's options.
"""

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU,
               "leaky_relu": nn.LeakyReLU, "sigmoid": nn.Sigmoid}


#: ``activation = "gated"``: every hidden layer a :class:`GatedDense` (the VampPrior paper's MLPs)
GATED = "gated"


class GatedDense(nn.Module):
    """A gated dense layer, h = (W1 x + b1) * sigmoid(W2 x + b2) (Dauphin et al. 2017): the hidden
    layer of the MLP encoders and decoders of Tomczak & Welling, "VAE with a VampPrior" (2018),
    two of 300 units each (``jmtomczak/vae_vampprior``, ``GatedDense``)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.h, self.g = nn.Linear(n_in, n_out), nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.h(x) * torch.sigmoid(self.g(x))


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


def _check_mlp_activation(name: str) -> None:
    """An MLP's activation: one of :data:`ACTIVATIONS`, or ``"gated"``."""
    if name not in ACTIVATIONS and name != GATED:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted([*ACTIVATIONS, GATED]))}")


def _mlp(sizes: List[int], activation: str) -> nn.Sequential:
    """Linear layers with the activation between them, none after the last; ``"gated"``: every hidden
    layer a :class:`GatedDense` (its gate is its non-linearity), the last a linear one."""
    _check_mlp_activation(activation)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    hidden = [layer for n_in, n_out in pairs[:-1] for layer in _hidden_layer(n_in, n_out, activation)]
    return nn.Sequential(*hidden, *[nn.Linear(n_in, n_out) for n_in, n_out in pairs[-1:]])


def _hidden_layer(n_in: int, n_out: int, activation: str) -> List[nn.Module]:
    """One hidden layer's modules: a :class:`GatedDense`, or a linear layer and the activation (a
    flat list: an MLP's parameter names, ``net.0.weight``, ``net.2.weight``, ..., are those its
    checkpoints have always had)."""
    if activation == GATED:
        return [GatedDense(n_in, n_out)]
    return [nn.Linear(n_in, n_out), _activation(activation)]


class TwoInputMLP(nn.Module):
    """(a, b) -> values: a and b each through a hidden layer of its own, the two concatenated, one
    joint hidden layer, then a linear layer; the leading (particle, batch) dims of a and b
    broadcast. The two-input networks of Tomczak & Welling's two-level VAE, q(z1 | x, z2) and
    p(x | z1, z2) (``jmtomczak/vae_vampprior``, ``models/HVAE_2level.py``).

    :param tuple sizes_in: the sizes of a and b.
    :param int hidden: the width of every hidden layer.
    :param int n_out: the number of values out.
    :param str activation: as for :class:`MLPEncoder` (``gated``: :class:`GatedDense` layers).
    """

    def __init__(self, sizes_in: Tuple[int, int], hidden: int, n_out: int, activation: str = GATED):
        super().__init__()
        _check_mlp_activation(activation)
        self.first = nn.ModuleList(nn.Sequential(*_hidden_layer(n, hidden, activation)) for n in sizes_in)
        self.joint = nn.Sequential(*_hidden_layer(2 * hidden, hidden, activation))
        self.out = nn.Linear(hidden, n_out)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ha, hb = self.first[0](a), self.first[1](b)
        batch = torch.broadcast_shapes(ha.shape[:-1], hb.shape[:-1])
        return self.out(self.joint(torch.cat([ha.expand(*batch, -1), hb.expand(*batch, -1)], -1)))


#: what an encoder may do to x before its network reads it (``input = ...``): counts want log1p,
#: as scVI's encoder reads log(1 + counts) (Lopez et al. 2018)
INPUT_TRANSFORMS = ("identity", "log1p")


def transformed(x: torch.Tensor, input: str) -> torch.Tensor:
    """x as an encoder with option ``input`` reads it: x itself, or log(1 + x)."""
    return torch.log1p(x) if input == "log1p" else x


def _check_hidden(hidden) -> List[int]:
    hidden = list(hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be >= 1, got {hidden}")
    return hidden


def checked_range(name: str, bounds) -> Optional[Tuple[float, float]]:
    """``[low, high]`` as a pair of finite floats with low < high, or None where absent."""
    if bounds is None:
        return None
    if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
            or not bounds[0] < bounds[1]):
        raise ValueError(f"{name} must be [low, high], two finite numbers with low < high, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def bounded(values: torch.Tensor, bounds: Optional[Tuple[float, float]]) -> torch.Tensor:
    """hardtanh(values, low, high) for ``bounds = (low, high)`` (no gradient outside them), or the
    values as they are where ``bounds`` is None (:func:`checked_range` gives it)."""
    return values if bounds is None else nn.functional.hardtanh(values, *bounds)


def _init_normal_(module: nn.Module, init_std: float) -> None:
    """The paper's initialisation: every weight and bias drawn from N(0, init_std^2)."""
    if init_std < 0:
        raise ValueError(f"init_std must be >= 0, got {init_std}")
    if init_std > 0:
        for p in module.parameters():
            nn.init.normal_(p, 0.0, init_std)


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """x -> hidden layers -> (mu, log sigma^2). The paper uses one hidden layer of tanh units.

    :param list hidden: hidden layer sizes.
    :param str activation: tanh, relu, softplus, elu, leaky_relu, sigmoid, or gated (every hidden
        layer a :class:`GatedDense`, as the VampPrior paper's MLPs).
    :param float init_std: if > 0, initialise every parameter from N(0, init_std^2) (the
        paper uses 0.01); 0 keeps PyTorch's default.
    :param str input: ``"identity"`` or ``"log1p"``: the network reads log(1 + x) (for counts).
    :param list log_var_range: ``[low, high]``: log sigma^2 = hardtanh(h, low, high), h the
        network's output, as the VampPrior paper's encoders bound it to [-6, 2] (Tomczak & Welling
        2018, ``jmtomczak/vae_vampprior``); the gradient is zero outside the range. Absent: unbounded.
    """

    def __init__(self, event_shape: Tuple[int, ...], latent_dim: int, hidden: List[int] = (256,),
                 activation: str = "relu", init_std: float = 0.0, input: str = "identity",
                 log_var_range: Optional[List[float]] = None):
        super().__init__()
        self.event_dim = len(event_shape)
        check_choice("input", input, INPUT_TRANSFORMS, ValueError)
        self.input = input
        self.log_var_range = checked_range("log_var_range", log_var_range)
        sizes = [math.prod(event_shape), *_check_hidden(hidden), 2 * latent_dim]
        _check_mlp_activation(activation)  # the name, even without hidden layers
        self.net = _mlp(sizes, activation)
        _init_normal_(self, init_std)

    def forward(self, x):
        loc, log_var = self.net(transformed(x, self.input).flatten(-self.event_dim)).chunk(2, dim=-1)
        return loc, bounded(log_var, self.log_var_range)


@DECODERS.register("mlp")
class MLPDecoder(nn.Module):
    """z -> hidden layers -> num_params values per data value.

    :param list hidden: hidden layer sizes.
    :param str activation: as for the encoder (``gated``: :class:`GatedDense` hidden layers).
    :param float init_std: as for the encoder.
    """

    def __init__(self, event_shape: Tuple[int, ...], latent_dim: int, num_params: int,
                 hidden: List[int] = (256,), activation: str = "relu", init_std: float = 0.0):
        super().__init__()
        self.out_shape = (num_params, *event_shape)
        _check_mlp_activation(activation)
        self.net = _mlp([latent_dim, *_check_hidden(hidden), math.prod(self.out_shape)], activation)
        _init_normal_(self, init_std)

    def forward(self, z):
        return self.net(z).unflatten(-1, self.out_shape)


def _image_shape(event_shape) -> Tuple[int, int, int]:
    if len(event_shape) == 2:
        return (1, *event_shape)
    if len(event_shape) == 3:
        return tuple(event_shape)
    raise ValueError(f"the conv networks need image data of shape (H, W) or (C, H, W), got {tuple(event_shape)}")


@ENCODERS.register("conv")
class ConvEncoder(nn.Module):
    """A small convolutional encoder: stride-2 4x4 convolutions, then a dense layer.

    It reads images (``reads_images``): a conditional family gives it its condition as extra
    constant channels, not as a flat vector.

    :param list channels: output channels of each conv layer (each halves height and width).
    :param int hidden: width of the dense layer.
    :param str activation: as for the MLP.
    :param str input: as for the MLP.
    """

    reads_images = True

    def __init__(self, event_shape: Tuple[int, ...], latent_dim: int, channels: List[int] = (32, 64),
                 hidden: int = 256, activation: str = "relu", input: str = "identity"):
        super().__init__()
        check_choice("input", input, INPUT_TRANSFORMS, ValueError)
        self.input = input
        self.event_shape = tuple(event_shape)
        self.image_shape = _image_shape(event_shape)
        channels = _check_hidden(channels)
        layers, c_in = [], self.image_shape[0]
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), _activation(activation)]
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *self.image_shape)).shape[-1]
        self.dense = _mlp([flat, *_check_hidden([hidden]), 2 * latent_dim], activation)
        self.act = _activation(activation)

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.event_shape)]
        h = self.act(self.conv(transformed(x, self.input).reshape(-1, *self.image_shape)))
        loc, log_var = self.dense(h).reshape(*batch, -1).chunk(2, dim=-1)
        return loc, log_var


@DECODERS.register("conv")
class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: dense layers, then stride-2 transposed convolutions.

    The coarse grid is ceil(H / 2^L) x ceil(W / 2^L) for L layers; the output is cropped to
    H x W, so any image size works (8x8 digits, 28x28 MNIST, 28x20 Frey Face).
    """

    def __init__(self, event_shape: Tuple[int, ...], latent_dim: int, num_params: int,
                 channels: List[int] = (32, 64), hidden: int = 256, activation: str = "relu"):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.num_params = num_params
        c, h, w = self.image_shape = _image_shape(event_shape)
        channels = _check_hidden(channels)[::-1]
        scale = 2 ** len(channels)
        self.grid = (channels[0], -(-h // scale), -(-w // scale))
        self.dense = nn.Sequential(_mlp([latent_dim, *_check_hidden([hidden]), math.prod(self.grid)], activation),
                                   _activation(activation))
        layers = []
        for c_in, c_out in zip(channels, channels[1:] + [num_params * c]):
            layers += [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1), _activation(activation)]
        self.deconv = nn.Sequential(*layers[:-1])

    def forward(self, z):
        batch = z.shape[:-1]
        out = self.deconv(self.dense(z.reshape(-1, z.shape[-1])).reshape(-1, *self.grid))
        _, h, w = self.image_shape
        out = out[..., :h, :w]
        return out.reshape(*batch, self.num_params, *self.event_shape)


CLASSIFIERS = Registry("classifier", context=("event_shape", "num_classes"))
"""Classifiers q(y | x) by name (``model.classifier`` of the ``m2`` family): networks from x to the
class logits, built with ``event_shape`` and ``num_classes``.
"""


@CLASSIFIERS.register("mlp")
class MLPClassifier(nn.Module):
    """x -> hidden layers -> class logits ``(M, num_classes)``: q_phi(y | x) = Cat(softmax(logits)),
    the classifier of the ``m2`` family (Kingma et al. 2014 use one hidden layer of 500 softplus units
    on MNIST).

    :param list hidden: hidden layer sizes.
    :param str activation: as for the MLP encoder.
    :param str input: as for the MLP encoder.
    """

    def __init__(self, event_shape: Tuple[int, ...], num_classes: int, hidden: List[int] = (256,),
                 activation: str = "relu", input: str = "identity"):
        super().__init__()
        self.event_dim = len(event_shape)
        check_choice("input", input, INPUT_TRANSFORMS, ValueError)
        self.input = input
        _check_mlp_activation(activation)
        self.net = _mlp([math.prod(event_shape), *_check_hidden(hidden), num_classes], activation)

    def forward(self, x):
        return self.net(transformed(x, self.input).flatten(-self.event_dim))
