"""Dropout cost: the byte-draw dropout of `model/dropout.py` against `flax.linen.Dropout`.

Times both layers, jitted, on the activations a MovieLens-100K OnePiece training step drops
(batch 256, 88 base tokens, d=64: the token / residual streams, the FFN's hidden layer and, with
``attention_dropout``, the attention weights), forward alone and forward + backward, median over
repeats; the two implementations are timed round-robin so that load from other processes affects
them alike. Also prints the realised drop rate of each, to show what the byte resolution costs.

    .venv/bin/python benchmarks/dropout.py [--repeats 30]

The last line is one JSON object: ``speedup`` (flax ms / ours ms) per tensor and pass, and
``realised_rate`` per implementation at the configured rate.
"""

from __future__ import annotations

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _timing import round_robin_ms

from onepiece_jax.model.dropout import Dropout

SHAPES = {"stream [256, 88, 64]": (256, 88, 64),
          "ffn hidden [256, 88, 256]": (256, 88, 256),
          "attention weights [256, 4, 88, 88]": (256, 4, 88, 88)}


def _fns(layer: nn.Module) -> dict:
    def forward(x, key):
        return layer.apply({}, x, deterministic=False, rngs={"dropout": key})

    def backward(x, key):
        return jax.grad(lambda y: (forward(y, key) * y).sum())(x)

    return {"forward": jax.jit(forward), "forward+backward": jax.jit(backward)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rate", type=float, default=0.2)
    args = parser.parse_args()
    layers = {"flax": nn.Dropout(args.rate), "ours": Dropout(args.rate)}
    fns = {name: _fns(layer) for name, layer in layers.items()}
    key = jax.random.key(0)
    print(f"dropout rate {args.rate}, {args.repeats} repeats, median ms "
          f"({jax.devices()[0].platform})")
    print(f"{'tensor':<36}{'pass':<18}{'flax':>9}{'ours':>9}{'speed-up':>10}")
    speedup = {}
    for label, shape in SHAPES.items():
        x = jax.random.normal(jax.random.key(1), shape)
        for pass_name in ("forward", "forward+backward"):
            med = round_robin_ms({name: lambda i, f=fn[pass_name], x=x: f(x, jax.random.key(i))
                                  for name, fn in fns.items()}, args.repeats)
            ratio = med["flax"] / med["ours"]
            speedup[f"{label} {pass_name}"] = round(ratio, 2)
            print(f"{label:<36}{pass_name:<18}{med['flax']:>9.1f}{med['ours']:>9.1f}"
                  f"{ratio:>9.2f}x")
    x = jnp.ones((512, 512))
    realised = {name: round(float((np.asarray(fn["forward"](x, key)) == 0).mean()), 4)
                for name, fn in fns.items()}
    print(f"realised drop rate at {args.rate} (512x512): " +
          ", ".join(f"{n} {r}" for n, r in realised.items()))
    print(json.dumps({"speedup": speedup, "realised_rate": realised}))


if __name__ == "__main__":
    main()
