"""1x1 vs 3x3 SAOConv2d forward against its dense twin at 1 thread (the measurement behind
``sk.convert(..., skip_pointwise_conv=True)``; results in docs/conversion.md).

    python benchmarks/bench_pointwise_conv.py

Each layer and its dense twin (``dense_equivalent``: the same weights in an nn.Conv2d) are
timed in interleaved rounds (sao_kernels.bench.timing) after checking that they agree;
prints the medians, the speed-up with its 95 % interval and the flags.
"""

from __future__ import annotations

import torch

import sao_kernels as sk
from sao_kernels.bench.timing import TimingSettings, compare, interleave
from sao_kernels.bench.twins import dense_equivalent

SHAPES = ((64, 256, 28, 4), (256, 512, 14, 8), (512, 1024, 7, 8))  # in ch, out ch, map side, batch


def main() -> None:
    torch.set_num_threads(1)
    settings = TimingSettings(min_run_time=0.3, max_run_time=2.0, min_rounds=15, max_rounds=400)
    for cin, cout, side, batch in SHAPES:
        for k in (1, 3):
            for G in (2, 4):
                layer = sk.SAOConv2d(cin, cout, k, padding=k // 2, groups=G, generator=torch.Generator().manual_seed(0))
                dense = dense_equivalent(layer)
                x = torch.randn(batch, cin, side, side)
                with torch.no_grad():
                    torch.testing.assert_close(layer(x), dense(x), rtol=1e-4, atol=1e-4)
                    steps = {"dense": lambda d=dense, x=x: d(x), "sao": lambda s=layer, x=x: s(x)}
                    stats = interleave(steps, settings)
                f = compare(stats["dense"], stats["sao"], ideal=float(G), flag_rel_spread=0.1)
                r = f.fields()
                print(
                    f"{cin}->{cout} {k}x{k} {side}x{side} batch {batch} G={G}: dense {r['ms_dense']:.3f} ms, "
                    f"sao {r['ms']:.3f} ms, speed-up {r['speedup']:.2f}x [{r['speedup_lo']:.2f}, "
                    f"{r['speedup_hi']:.2f}] {f.flag}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
