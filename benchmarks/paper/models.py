"""The networks the reproduction trains: vanilla MLPs and CNNs whose hidden layers carry
the init under test (no normalisation, no skips), built per reference convention.

MLP of depth L (EOI's models/mlps.py count): Linear(64, w), L - 2 hidden (w x w) layers,
Linear(w, 10); L linear layers in all.  Input and head layers are dense orthogonal for every
init (EOI's Linear_Init and the SAO code both keep non-square layers dense), drawn from a
generator that makes them identical across the inits of one seed.

Hidden inits (``method``; ``sao:b16`` = SAO with block_size 16):
  sao            SAOLinear (ReLU nets: activation="relu", the looks-linear construction)
  orthogonal     dense orthogonal (ReLU nets: x sqrt(2))
  ll-orthogonal  looks-linear dense orthogonal [[M, -M], [-M, M]] (the SAO code's ReLU baseline)
  eoi            EOI's exact sparse orthogonal: random Givens rotations of the identity until
                 the density 1 - sparsity is reached (orthogonal/ortho.py), masked dense
  rg-n, rg-u     the SAO mask with Gaussian / uniform values (library-scaled, see docs/construction.md)
  lmp, lrp       dense orthogonal pruned by magnitude / at random (masked dense, not rescaled)
  lmp-s, lrp-s   the same x 1/sqrt(density): LRP's kept weights then carry the dense layer's
                 expected signal scale, so "SAO beats pruning" is not only a matter of scale
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import sao_kernels as sk

from .settings import CONVENTIONS


def parse_method(method: str) -> tuple[str, int]:
    """ "sao:b16" -> ("sao", 16); "orthogonal" -> ("orthogonal", 1)."""
    base, _, b = method.partition(":b")
    return base, int(b) if b else 1


class MaskedLinear(nn.Linear):
    """Dense linear layer with a fixed 0/1 ``weight_mask`` re-applied after every step."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.weight.copy_(weight * mask)
        self.register_buffer("weight_mask", mask.to(self.weight.dtype))


class MaskedConv2d(nn.Conv2d):
    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            1,
            conv.bias is not None,
            conv.padding_mode,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight * mask)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.register_buffer("weight_mask", mask.to(self.weight.dtype))


def apply_masks_(model: nn.Module) -> None:
    """Zero the pruned weights again (momentum and weight decay would regrow them)."""
    pairs = [(m.weight, m.weight_mask) for m in model.modules() if isinstance(m, (MaskedLinear, MaskedConv2d))]
    if pairs:
        with torch.no_grad():
            torch._foreach_mul_([p for p, _ in pairs], [k for _, k in pairs])


def givens_orthogonal(n: int, density: float, rng: np.random.Generator) -> np.ndarray:
    """EOI's orthogonal_with_density for a square n x n matrix: random Givens rotations
    (i < j uniform, angle U(0, 2 pi)) applied to the identity's columns until the density
    reaches ``density``; the last or the previous matrix, whichever is closer."""
    a = np.eye(n)
    nnz, target = n, density * n * n
    prev, prev_nnz = a, nnz
    while nnz < target:
        prev, prev_nnz = a.copy(), nnz
        i, j = sorted(rng.choice(n, size=2, replace=False))
        alpha = rng.uniform(0.0, 2.0 * math.pi)
        c, s = math.cos(alpha), math.sin(alpha)
        ci, cj = a[:, i].copy(), a[:, j].copy()
        before = np.count_nonzero(ci) + np.count_nonzero(cj)
        a[:, i], a[:, j] = c * ci + s * cj, -s * ci + c * cj
        nnz += np.count_nonzero(a[:, i]) + np.count_nonzero(a[:, j]) - before
    return prev if abs(target - prev_nnz) < abs(target - nnz) else a


def looks_linear_orthogonal(width: int, gain: float, g: torch.Generator) -> torch.Tensor:
    """[[M, -M], [-M, M]] with M a (width/2)^2 orthogonal matrix (SAO code, base.py)."""
    m = torch.empty(width // 2, width // 2)
    nn.init.orthogonal_(m, gain=gain, generator=g)
    return torch.cat([torch.cat([m, -m], 1), torch.cat([-m, m], 1)], 0)


def _dense(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def hidden_linear(method: str, width: int, act: str, sparsity: float, gain: float, g: torch.Generator) -> nn.Module:
    """One width x width hidden layer.  ``gain``: the convention's weight gain (EOI sqrt(1.05))."""
    base, block = parse_method(method)
    relu = act == "relu"
    if base == "sao":
        return sk.SAOLinear(
            width,
            width,
            sparsity=sparsity,
            activation="relu" if relu else "tanh",
            init="sao",
            block_size=block,
            gain=gain,
            generator=g,
        )
    # sqrt(2) for ReLU: He's gain for plain dense and pruned weights; for RG-N / RG-U the
    # library scales to variance gain^2 / fan_in and the looks-linear fan-in counts both halves.
    relu_gain = gain * (math.sqrt(2.0) if relu else 1.0)
    if base in ("rg-n", "rg-u"):
        return sk.SAOLinear(
            width,
            width,
            sparsity=sparsity,
            activation="relu" if relu else "tanh",
            init=base,
            block_size=block,
            gain=relu_gain,
            generator=g,
        )
    w = torch.empty(width, width)
    if base == "orthogonal":
        nn.init.orthogonal_(w, gain=relu_gain, generator=g)
        return _dense(w)
    if base == "ll-orthogonal":
        return _dense(looks_linear_orthogonal(width, gain, g))
    if base == "eoi":
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        a = torch.as_tensor(givens_orthogonal(width, 1.0 - sparsity, rng), dtype=torch.float32) * relu_gain
        return MaskedLinear(a, (a != 0).float())
    if base in ("lmp", "lrp", "lmp-s", "lrp-s"):
        fill = sk.init.magnitude_prune_ if base.startswith("lmp") else sk.init.random_prune_
        mask = fill(w, sparsity, base="orthogonal", gain=relu_gain, generator=g)
        if base.endswith("-s"):
            w = w / math.sqrt(1.0 - sparsity)
        return MaskedLinear(w, mask.float())
    raise ValueError(f"unknown MLP init {method!r}")


class MLP(nn.Module):
    def __init__(self, layers: list[nn.Module], act: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.act = {"tanh": nn.Tanh, "relu": nn.ReLU}[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *body, last = self.layers
        for layer in body:
            x = self.act(layer(x))
        return last(x)

    def hidden_stack(self, count: int) -> nn.Sequential:
        """The first ``count`` hidden layers with their activations (for Jacobians)."""
        mods: list[nn.Module] = []
        for layer in list(self.layers)[1 : 1 + count]:
            mods += [layer, type(self.act)()]
        return nn.Sequential(*mods)


def _set_biases(model: nn.Module, convention: str, seed: int) -> None:
    conv = CONVENTIONS[convention]
    if conv["bias"] == "torch-default":
        return  # left as the layers drew them (nn.Linear's rule; SAOLinear / SAOConv2d follow it)
    g = torch.Generator().manual_seed(30_000 + seed)
    with torch.no_grad():
        for m in model.modules():
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=g) * conv["bias_std"])


def build_mlp(
    method: str,
    depth: int,
    act: str,
    sparsity: float,
    convention: str,
    seed: int,
    *,
    width: int = 128,
    in_dim: int = 64,
    classes: int = 10,
) -> MLP:
    """``depth`` linear layers in all: 64 -> width, depth - 2 hidden, width -> 10."""
    if depth < 3:
        raise ValueError(f"depth counts every linear layer and must be >= 3, got {depth}")
    torch.manual_seed(seed)  # torch's default bias init draws from the global generator
    gain = CONVENTIONS[convention]["gain"]
    g_io = torch.Generator().manual_seed(10_000 + seed)
    g = torch.Generator().manual_seed(seed)
    first, last = torch.empty(width, in_dim), torch.empty(classes, width)
    nn.init.orthogonal_(first, gain=gain, generator=g_io)
    nn.init.orthogonal_(last, gain=gain, generator=g_io)
    layers = [_dense(first)] + [hidden_linear(method, width, act, sparsity, gain, g) for _ in range(depth - 2)]
    layers.append(_dense(last))
    model = MLP(layers, act)
    _set_biases(model, convention, seed)
    return model


def _delta_orthogonal(cin: int, cout: int, k: int, gain: float, g: torch.Generator) -> torch.Tensor:
    w = torch.zeros(cout, cin, k, k)
    centre = torch.empty(cout, cin)
    nn.init.orthogonal_(centre, gain=gain, generator=g)
    w[:, :, k // 2, k // 2] = centre
    return w


class CNN(nn.Module):
    """``depth`` 3x3 convs (1 -> C, then depth - 1 of C -> C), tanh, global average pool, C -> 10."""

    def __init__(
        self,
        method: str,
        depth: int,
        channels: int,
        sparsity: float,
        convention: str,
        seed: int,
        classes: int = 10,
        padding: str | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        gain = CONVENTIONS[convention]["gain"]
        g, g_io = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(10_000 + seed)
        # ECO is orthogonal with circular padding; None: the first run's rule (circular for ECO only)
        pm = padding if padding is not None else ("circular" if method == "sao-eco" else "zeros")
        self.first = nn.Conv2d(1, channels, 3, padding=1, padding_mode=pm)
        with torch.no_grad():
            self.first.weight.copy_(_delta_orthogonal(1, channels, 3, gain, g_io))
        convs = []
        for _ in range(depth - 1):
            if method in ("sao-delta", "sao-eco", "rg-n-delta"):
                init = {"sao-delta": "delta", "sao-eco": "eco", "rg-n-delta": "rg-n"}[method]
                conv = sk.SAOConv2d(
                    channels,
                    channels,
                    3,
                    padding=1,
                    padding_mode=pm,
                    sparsity=sparsity,
                    init=init,
                    gain=gain,
                    generator=g,
                )
            elif method in ("delta-orthogonal", "lrp-delta"):
                conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode=pm)
                with torch.no_grad():
                    conv.weight.copy_(_delta_orthogonal(channels, channels, 3, gain, g))
                if method == "lrp-delta":  # random kernel pruning, as the SAO code's mask_random
                    keep = max(1, round((1 - sparsity) * channels * channels))
                    flat = torch.zeros(channels * channels)
                    flat[torch.randperm(channels * channels, generator=g)[:keep]] = 1.0
                    conv = MaskedConv2d(conv, flat.view(channels, channels, 1, 1).expand_as(conv.weight).clone())
            else:
                raise ValueError(f"unknown CNN init {method!r}")
            convs.append(conv)
        self.convs = nn.ModuleList(convs)
        self.head = nn.Linear(channels, classes)
        with torch.no_grad():
            nn.init.orthogonal_(self.head.weight, gain=gain, generator=g_io)
        _set_biases(self, convention, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.first(x.view(-1, 1, 8, 8)))
        for conv in self.convs:
            x = torch.tanh(conv(x))
        return self.head(x.mean((2, 3)))


def build(spec: dict) -> nn.Module:
    """The model of one job spec (keys: arch, method, depth, act, sparsity, convention, seed, ...)."""
    if spec["arch"] == "mlp":
        return build_mlp(
            spec["method"],
            spec["depth"],
            spec["act"],
            spec["sparsity"],
            spec["convention"],
            spec["seed"],
            width=spec.get("width", 128),
        )
    return CNN(
        spec["method"],
        spec["depth"],
        spec.get("channels", 32),
        spec["sparsity"],
        spec["convention"],
        spec["seed"],
        padding=spec.get("padding"),
    )
