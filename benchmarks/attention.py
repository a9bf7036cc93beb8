"""Attention cost: the model's heads-major softmax attention against `jax.nn.dot_product_attention`.

Times one ``SelfAttention`` layer, jitted, with ``model.attention_impl=''`` (the default:
``softmax_attention`` in ``[B, H, S, D_h]``) and ``'xla'`` (the library kernel, which works in
``[B, S, H, D_h]``), forward alone and forward + backward, median over repeats, round-robin so
that load from other processes affects both alike. The shapes are those of a MovieLens-100K
OnePiece training step (batch 256, 88 base tokens: 50 history + 36 anchors + 2 SD, d = 64,
4 heads) — the base pass, and a reasoning step (its 2 rows against the 88 cached keys plus
its own) — and a longer history (batch 64, 256 tokens). The two outputs are compared as well.

    .venv/bin/python benchmarks/attention.py [--repeats 30]

The last line is one JSON object: ``speedup`` (xla ms / ours ms) per case and pass, and
``max_abs_diff`` per case.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from _timing import round_robin_ms

from onepiece_jax.model.attention import SelfAttention
from onepiece_jax.model.config import ModelConfig

# name: (batch, cached keys, new rows)
CASES = {"base pass, B=256, 88 tokens": (256, 0, 88),
         "reasoning step, B=256, 2 rows on 88 cached": (256, 88, 2),
         "base pass, B=64, 256 tokens": (64, 0, 256)}


def _case(impl: str | None, batch: int, cached: int, rows: int, key: jax.Array) -> dict:
    cfg = ModelConfig(d_model=64, num_heads=4, attention_impl=impl)
    layer = SelfAttention(cfg, max_distance=8)
    rng = np.random.default_rng(0)
    total = cached + rows
    mask = jnp.asarray(np.broadcast_to((rng.random((batch, total)) > 0.2)[:, None, None],
                                       (batch, 1, rows, total)))
    x = jnp.asarray(rng.normal(size=(batch, rows, 64)), jnp.float32)
    positions = np.arange(total, dtype=np.int32)
    cache = None
    if cached:  # the base pass's keys and values, as a reasoning step finds them
        base = jnp.asarray(rng.normal(size=(batch, cached, 64)), jnp.float32)
        base_args = (jnp.ones((batch, 1, cached, cached), bool), None, positions[:cached],
                     positions[:cached])
        params = layer.init(key, base, *base_args)
        _, cache = layer.apply(params, base, *base_args)
    else:
        params = layer.init(key, x, mask, None, positions, positions)

    def forward(p, h):
        return layer.apply(p, h, mask, cache, positions[cached:], positions)[0]

    def backward(p, h):
        return jax.grad(lambda q, y: (forward(q, y) * y).sum(), argnums=(0, 1))(p, h)

    return {name: functools.partial(jax.jit(fn), params, x)
            for name, fn in (("forward", forward), ("forward+backward", backward))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    key = jax.random.key(0)
    print(f"one SelfAttention layer (d=64, 4 heads), {args.repeats} repeats, median ms "
          f"({jax.devices()[0].platform})")
    print(f"{'case':<46}{'pass':<18}{'xla':>9}{'ours':>9}{'speed-up':>10}")
    speedup, diff = {}, {}
    for case, shape in CASES.items():
        runs = {impl: _case(impl, *shape, key) for impl in (None, "xla")}
        diff[case] = float(np.abs(np.asarray(runs[None]["forward"]())
                                  - np.asarray(runs["xla"]["forward"]())).max())
        for name in ("forward", "forward+backward"):
            ms = round_robin_ms({impl: lambda _, c=runs[impl][name]: c() for impl in runs},
                                args.repeats)
            ours, xla = ms[None], ms["xla"]
            speedup.setdefault(case, {})[name] = round(xla / ours, 2)
            print(f"{case:<46}{name:<18}{xla:>9.2f}{ours:>9.2f}{xla / ours:>9.2f}×")
        print(f"{'':<46}max |ours − xla| = {diff[case]:.1e}")
    print(json.dumps({"speedup": speedup, "max_abs_diff": diff, "repeats": args.repeats,
                      "platform": jax.devices()[0].platform}))


if __name__ == "__main__":
    main()
