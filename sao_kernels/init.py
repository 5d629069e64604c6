"""SAO construction (Esguerra et al., IEEE Access 2023) and the paper's baselines.

Topology, as in the authors' code: the larger dimension (L) is split into G groups of
d = L/G by a uniformly random partition; the smaller dimension (S) is split by a fixed
rule, interleaved ``{g, g+G, g+2G, ...}`` by default (the paper's code) or contiguous
``[g*a, (g+1)*a)`` (what the layers use: their outputs then need no scatter).  When
m == n the input dimension takes the random partition, as in the paper's code.  With
``block_size`` b both rules act on tiles of b consecutive features instead of single
features (b = 1 is the paper's element-level construction).

Values: each group's (a x d) block is the first a rows of a Haar-random d x d orthogonal
matrix (QR of a Gaussian with the signs of diag(R) folded in), times ``gain``; the weight is
transposed when out > in, so W W^T = I (out <= in) or W^T W = I (out > in).

ReLU ("looks-linear"): W = [[M, -M], [-M, M]] from the half-size SAO matrix M, unit i
paired with unit i + n/2; for an input [relu(h), relu(-h)] the output is [Mh, -Mh].

Deviations from the reference code (all deliberate): impossible degrees raise instead of
looping; orthogonal blocks are Haar (the code orthonormalised a uniform matrix); the
looks-linear doubling is never skipped silently (the code skipped it when in == 3: pass
``activation="tanh"`` for such a layer); RG-N / RG-U values are zero-mean and scaled to
variance gain^2 / fan_in (the code used unscaled randn / rand); a bug that took the output
size as the larger dimension is not repeated.

The pruning baselines (LMP, LRP) live in ``sao_kernels.pruning`` and are re-exported here.

Every function builds its random numbers on the generator's device (CPU by default) in
float64 and only then casts and moves, so a seed gives the same layer on every device and
dtype.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_float_dtype, check_gain, check_generator, check_tensor, gen_device, is_int, target_device
from .format import GroupedBlockFormat
from .pruning import magnitude_prune_, random_prune_
from .sizes import SAOSizes, resolve_sizes, valid_sparsities

__all__ = [
    "DisconnectedTilesWarning",
    "CONV_INITS",
    "LINEAR_INITS",
    "eco_frequency_pairs",
    "magnitude_prune_",
    "random_prune_",
    "resolve_sizes",
    "rg_normal_",
    "rg_uniform_",
    "sao_",
    "sao_blocks",
    "sao_delta_",
    "sao_eco_",
    "sao_topology",
    "valid_sparsities",
]

LINEAR_INITS = ("sao", "rg-n", "rg-u")
CONV_INITS = ("delta", "eco", "rg-n", "rg-u")
SMALLER_GROUP_RULES = ("interleaved", "contiguous")


# ------------------------------------------------------------------- topology
def _tiles_to_features(tiles: Tensor, block_size: int) -> Tensor:
    """(G, t) tile ids -> (G, t*b) feature ids, each tile a run of b features."""
    run = torch.arange(block_size, device=tiles.device)
    return (tiles.unsqueeze(-1) * block_size + run).flatten(1)


def sao_topology(
    sizes: SAOSizes,
    *,
    smaller_groups: str = "interleaved",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw the SAO group structure for ``sizes`` (which must not be ReLU-doubled).

    Returns:
        (out_index (m,), in_index (n,)), int64 on the generator's device, in group order;
        features ascending within each group.
    """
    if not isinstance(sizes, SAOSizes):
        raise TypeError(f"sizes must be an SAOSizes (see resolve_sizes), got {type(sizes).__name__}")
    if not isinstance(smaller_groups, str) or smaller_groups not in SMALLER_GROUP_RULES:
        raise ValueError(f"smaller_groups={smaller_groups!r} is not supported; allowed: {SMALLER_GROUP_RULES}")
    if sizes.activation == "relu":
        raise ValueError("sao_topology: pass the half-size base sizes of a ReLU layer, not the doubled ones")
    check_generator(generator)
    G, b = sizes.groups, sizes.block_size
    L, S = sizes.larger, sizes.smaller
    if G > 1 and b > 1 and L // G == b and S // G == b:
        warnings.warn(
            f"block_size={b} equals the group side ({L}/{G} = {S}/{G} = {b}): every group is one tile on each "
            f"side, so stacked layers form {G} disjoint chains that never mix; use block_size <= {b // 2}",
            DisconnectedTilesWarning,
            stacklevel=3,
        )
    dev = gen_device(generator)
    # Larger dimension: uniformly random partition of its L/b tiles into G groups.
    perm = torch.randperm(L // b, generator=generator, device=dev)
    large = _tiles_to_features(torch.sort(perm.view(G, -1), dim=1).values, b).flatten()
    # Smaller dimension: a fixed rule over its S/b tiles.
    tiles = torch.arange(S // b, device=dev)
    if smaller_groups == "interleaved":
        tiles = tiles.view(-1, G).t()  # group g owns tiles g, g+G, g+2G, ...
    else:
        tiles = tiles.view(G, -1)
    small = _tiles_to_features(tiles, b).flatten()
    if sizes.out_features <= sizes.in_features:
        return small, large
    return large, small


class DisconnectedTilesWarning(UserWarning):
    """``block_size`` equals the group side on both dimensions: each group joins one input tile
    to one output tile, so a stack of such layers is G disjoint chains that never mix.  In the
    paper reproduction's first run (benchmarks/paper/results/results.md, tile table) it lost
    33 points at depth 100 (95 % interval 6 to 61); at depth 1000 and for b = 32 at sparsity
    0.75 the loss was not detectable with 3 seeds.  Silence it with
    ``warnings.filterwarnings("ignore", category=DisconnectedTilesWarning)``."""


# --------------------------------------------------------------------- values
def _haar_rows(G: int, rows: int, d: int, generator: torch.Generator | None) -> Tensor:
    """(G, rows, d) float64: the first ``rows`` rows of G Haar-random d x d orthogonal matrices."""
    z = torch.randn(G, d, d, generator=generator, device=gen_device(generator), dtype=torch.float64)
    q, r = torch.linalg.qr(z)
    # Folding sign(diag(R)) into Q makes the QR decomposition unique, hence Q Haar.
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    sign[sign == 0] = 1.0
    q = q * sign.unsqueeze(-2)
    return q[:, :rows, :]


def _sao_values(sizes: SAOSizes, generator: torch.Generator | None) -> Tensor:
    """(G, m/G, n/G) float64 orthogonal blocks: rows orthonormal if m <= n, else columns."""
    G, d = sizes.groups, sizes.degree
    a = sizes.smaller // G
    blocks = _haar_rows(G, a, d, generator)  # (G, a, d): a block of the (S x L) matrix M
    return blocks if sizes.out_features <= sizes.in_features else blocks.transpose(1, 2)


def _random_values(kind: str, shape: Sequence[int], fan_in: int, generator: torch.Generator | None) -> Tensor:
    """Zero-mean values of variance 1/fan_in: Gaussian (rg-n) or uniform (rg-u)."""
    dev = gen_device(generator)
    if kind == "rg-n":
        return torch.randn(*shape, generator=generator, device=dev, dtype=torch.float64) / math.sqrt(fan_in)
    bound = math.sqrt(3.0 / fan_in)
    u = torch.rand(*shape, generator=generator, device=dev, dtype=torch.float64)
    return (2.0 * u - 1.0) * bound


def _looks_linear(values: Tensor) -> Tensor:
    """(G, a, c, *k) -> (G, 2a, 2c, *k): each block V becomes [[V, -V], [-V, V]]."""
    top = torch.cat([values, -values], dim=2)
    return torch.cat([top, -top], dim=1)


def _double_index(index: Tensor, G: int, half: int) -> Tensor:
    """Group g's features f become f and f + half (the looks-linear pairing)."""
    per = index.view(G, -1)
    return torch.cat([per, per + half], dim=1).flatten()


def _kernel_pair(kernel_size: int | Sequence[int]) -> tuple[int, int]:
    if is_int(kernel_size):
        k: tuple = (kernel_size, kernel_size)
    elif isinstance(kernel_size, (tuple, list, torch.Size)):
        k = tuple(kernel_size)
    else:
        k = ()
    if len(k) != 2 or any(not is_int(x) or x < 1 for x in k):
        raise ValueError(f"kernel_size must be a positive int or a pair of them, got {kernel_size!r}")
    return int(k[0]), int(k[1])


def eco_frequency_pairs(kh: int, kw: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Frequencies of a kh x kw DFT grouped by conjugation f ~ -f (mod the grid).

    Returns one (f, -f) pair per class, in row-major order of f.  A real kernel needs
    A[-f] = conj(A[f]); with a real A[f] that is A[-f] = A[f].  For odd k x k there are
    (k*k + 1) // 2 classes, as in the ECO construction.
    """
    if not (is_int(kh) and is_int(kw) and kh >= 1 and kw >= 1):
        raise ValueError(f"kh and kw must be positive ints, got kh={kh!r}, kw={kw!r}")
    seen: set[tuple[int, int]] = set()
    pairs = []
    for p in range(kh):
        for q in range(kw):
            if (p, q) in seen:
                continue
            partner = ((-p) % kh, (-q) % kw)
            seen.update({(p, q), partner})
            pairs.append(((p, q), partner))
    return pairs


def sao_blocks(
    out_features: int,
    in_features: int,
    *,
    sparsity: float | None = None,
    degree: int | None = None,
    groups: int | None = None,
    activation: str = "tanh",
    init: str | None = None,
    kernel_size: int | Sequence[int] | None = None,
    block_size: int = 1,
    gain: float = 1.0,
    smaller_groups: str = "interleaved",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> GroupedBlockFormat:
    """Build one SAO layer directly in the compact format.

    Args:
        out_features, in_features: m, n (output / input channels for a convolution).
        sparsity / degree / groups: exactly one; see :func:`sao_kernels.sizes.resolve_sizes`.
        activation: "linear", "tanh" (plain SAO) or "relu" (looks-linear doubling).
        init: linear {"sao", "rg-n", "rg-u"} (default "sao"); convolution {"delta", "eco",
            "rg-n", "rg-u"} (default "delta").
        kernel_size: None for a linear layer, an int or (kh, kw) for a convolution.
        block_size: tile width b of the partitions (1 = the paper's construction).
        gain: scale of the values, a finite float > 0.
        smaller_groups: "interleaved" (paper) or "contiguous" rule for the smaller dim.
        generator, device, dtype: randomness source, and where / how to put the result
            (device None: torch's default device; dtype None: the default dtype).  The
            random numbers are drawn on the generator's device (CPU without one) in
            float64 and only then cast and moved, so a seed gives the same layer anywhere.
            On the meta device nothing is drawn (and the generator is not advanced): the
            result has the right shapes and dtypes and no data, in microseconds at any
            size; fill it later (e.g. a layer's ``reset_parameters()``).

    Returns:
        GroupedBlockFormat with values (G, m/G, n/G[, kh, kw]).
    """
    check_generator(generator)
    conv = kernel_size is not None
    allowed = CONV_INITS if conv else LINEAR_INITS
    init = allowed[0] if init is None else init
    if init not in allowed:
        kind = "a convolution" if conv else "a linear layer"
        raise ValueError(f"init={init!r} is not supported for {kind}; allowed: {', '.join(map(repr, allowed))}")
    kh, kw = _kernel_pair(kernel_size) if conv else (1, 1)
    if init == "delta" and (kh % 2 == 0 or kw % 2 == 0):
        raise ValueError(f"init='delta' needs odd kernel sizes to have a centre tap, got kernel_size={(kh, kw)}")
    gain = check_gain(gain)
    check_float_dtype(dtype)
    if not isinstance(smaller_groups, str) or smaller_groups not in SMALLER_GROUP_RULES:
        raise ValueError(f"smaller_groups={smaller_groups!r} is not supported; allowed: {SMALLER_GROUP_RULES}")
    target = target_device(device)
    dtype = dtype if dtype is not None else torch.get_default_dtype()

    full = resolve_sizes(
        out_features,
        in_features,
        sparsity=sparsity,
        degree=degree,
        groups=groups,
        activation=activation,
        block_size=block_size,
    )
    if target.type == "meta":  # shapes only: nothing to draw, nothing to check
        G = full.groups
        m, n = full.out_features, full.in_features
        shape = (G, m // G, n // G, kh, kw) if conv else (G, m // G, n // G)
        return GroupedBlockFormat(
            torch.empty(shape, dtype=dtype, device=target),
            torch.empty(n, dtype=torch.int64, device=target),
            torch.empty(m, dtype=torch.int64, device=target),
            full.block_size,
        )
    relu = activation == "relu"
    base = full
    if relu:
        base = SAOSizes(
            full.out_features // 2, full.in_features // 2, full.groups, full.degree // 2, full.block_size, "linear"
        )
    G = base.groups
    a, c = base.out_features // G, base.in_features // G
    out_index, in_index = sao_topology(base, smaller_groups=smaller_groups, generator=generator)

    if init in ("sao", "delta"):
        values = _sao_values(base, generator)
        if conv:
            centred = values.new_zeros(G, a, c, kh, kw)
            centred[..., kh // 2, kw // 2] = values
            values = centred
    elif init == "eco":
        pairs = eco_frequency_pairs(kh, kw)
        spectrum = torch.empty(kh, kw, G, a, c, dtype=torch.float64, device=gen_device(generator))
        for f, partner in pairs:  # one SAO matrix per conjugate class, all on one mask
            spectrum[f] = spectrum[partner] = _sao_values(base, generator)
        kernel = torch.fft.ifft2(spectrum, dim=(0, 1))
        # The spectrum is real and even, so the kernel is real up to rounding.
        values = kernel.real.permute(2, 3, 4, 0, 1).contiguous()
    else:
        shape = (G, a, c, kh, kw) if conv else (G, a, c)
        # In the doubled ReLU layer every output sees 2c inputs.
        values = _random_values(init, shape, (2 if relu else 1) * c * kh * kw, generator)

    if relu:
        values = _looks_linear(values)
        out_index = _double_index(out_index, G, base.out_features)
        in_index = _double_index(in_index, G, base.in_features)
    values = values * gain
    return GroupedBlockFormat(
        values.to(device=target, dtype=dtype).contiguous(),
        in_index.to(device=target),
        out_index.to(device=target),
        full.block_size,
    )


# ----------------------------------------------------------- in-place helpers
def _fill_(tensor: Tensor, blocks: GroupedBlockFormat) -> Tensor:
    with torch.no_grad():
        tensor.copy_(blocks.to_dense())
    mask = blocks.mask()
    if tensor.dim() == 4:
        mask = mask[:, :, None, None].expand(tensor.shape)
    return mask.to(tensor.device).contiguous()


def _fill_with_(
    name: str,
    init: str,
    dims: tuple[int, ...],
    tensor: Tensor,
    sparsity,
    degree,
    groups,
    activation,
    gain,
    block_size,
    generator,
) -> Tensor:
    """The in-place helpers' common body: check ``tensor`` (one of ``dims``), draw the
    layer with ``init`` in float64 and copy its dense form in; return the bool mask."""
    check_tensor(name, tensor, dims)
    blocks = sao_blocks(
        tensor.shape[0],
        tensor.shape[1],
        sparsity=sparsity,
        degree=degree,
        groups=groups,
        activation=activation,
        init=init,
        kernel_size=tuple(tensor.shape[2:]) if tensor.dim() == 4 else None,
        block_size=block_size,
        gain=gain,
        generator=generator,
        device=tensor.device,
        dtype=torch.float64,
    )
    return _fill_(tensor, blocks)


def sao_(
    tensor: Tensor,
    sparsity: float | None = None,
    *,
    degree: int | None = None,
    groups: int | None = None,
    activation: str = "tanh",
    gain: float = 1.0,
    block_size: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill a dense (out, in) ``tensor`` in place with an SAO matrix; return its bool mask.

    >>> w = torch.empty(64, 128); mask = sao_(w, sparsity=0.75)
    >>> mask.float().mean().item(), torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)
    (0.25, True)
    """
    return _fill_with_("sao_", "sao", (2,), tensor, sparsity, degree, groups, activation, gain, block_size, generator)


def sao_delta_(
    tensor: Tensor,
    sparsity: float | None = None,
    *,
    degree: int | None = None,
    groups: int | None = None,
    activation: str = "tanh",
    gain: float = 1.0,
    block_size: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SAO-Delta: fill a conv weight (out, in, kh, kw) with an SAO matrix at the centre tap
    and zeros elsewhere (delta-orthogonal, Xiao et al. 2018).  Kernel sizes must be odd.
    Returns the bool mask of kept (out, in) kernels, broadcast to the tensor's shape."""
    return _fill_with_(
        "sao_delta_", "delta", (4,), tensor, sparsity, degree, groups, activation, gain, block_size, generator
    )


def sao_eco_(
    tensor: Tensor,
    sparsity: float | None = None,
    *,
    degree: int | None = None,
    groups: int | None = None,
    activation: str = "tanh",
    gain: float = 1.0,
    block_size: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SAO-ECO: the explicitly constructed orthogonal convolution of Yu et al. (ICLR 2022)
    whose per-frequency matrices are SAO matrices sharing one mask.

    One SAO matrix is drawn per conjugate class of the kh x kw DFT grid, copied to the
    conjugate frequency, and the kernel is the inverse 2-D DFT.  With circular padding the
    convolution is then an orthogonal operator on kh x kw-periodic inputs (for an even k the
    circular padding must be uneven, k//2 before and k//2 - 1 after, to keep the output
    k x k).  Returns the bool mask of kept kernels, broadcast to the tensor's shape."""
    return _fill_with_(
        "sao_eco_", "eco", (4,), tensor, sparsity, degree, groups, activation, gain, block_size, generator
    )


def rg_normal_(
    tensor: Tensor,
    sparsity: float | None = None,
    *,
    degree: int | None = None,
    groups: int | None = None,
    activation: str = "tanh",
    gain: float = 1.0,
    block_size: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RG-N baseline: the SAO mask with N(0, gain^2 / fan_in) values (fan_in counts the
    kept inputs of one output, times kh*kw for a conv).  Linear or conv weight."""
    return _fill_with_(
        "rg_normal_", "rg-n", (2, 4), tensor, sparsity, degree, groups, activation, gain, block_size, generator
    )


def rg_uniform_(
    tensor: Tensor,
    sparsity: float | None = None,
    *,
    degree: int | None = None,
    groups: int | None = None,
    activation: str = "tanh",
    gain: float = 1.0,
    block_size: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RG-U baseline: the SAO mask with U(-sqrt(3/fan_in), sqrt(3/fan_in)) * gain values
    (same variance as RG-N).  Linear or conv weight."""
    return _fill_with_(
        "rg_uniform_", "rg-u", (2, 4), tensor, sparsity, degree, groups, activation, gain, block_size, generator
    )
