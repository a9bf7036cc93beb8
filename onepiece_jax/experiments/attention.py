"""Attention maps by segment (paper App. C): how much each segment's tokens attend to each segment.

For a trained workdir, one validation batch is run through the best checkpoint with the model's
attention capture switched on (``model.attention.CAPTURE``). The base pass and the K KV-cached
reasoning steps give, per layer, one attention matrix over ``[base ; R1 .. RK]``; each row's
weights are summed over the key tokens of every segment (IH, PA, SD, CIS, R1..RK) and averaged
over the valid query tokens of the row's segment and over the batch. The result,
``f32[layers, heads, segments, segments]`` with rows summing to 1 (softmax attention), is saved as
``WORKDIR/attention.npz`` and plotted as one grid of heatmaps per mode.

A segment's raw share says little by itself: 50 history tokens get more mass than 3 SD tokens
even under uniform attention. So the same average is taken of uniform weights over each row's
visible keys (the model's own mask), ``f32[segments, segments]``, saved beside the maps as
``uniform``; the report prints both, and their ratio is how strongly a segment is sought out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_EXAMPLES = 256


def segment_layout(layout, steps: int) -> tuple[list[str], np.ndarray]:
    """Segment names present and the segment index of every token of ``[base ; R1..RK]``."""
    sizes = [("IH", layout.ih), ("PA", layout.pa), ("SD", layout.sd), ("CIS", layout.cis)]
    sizes += [(f"R{k}", layout.block_rows) for k in range(1, steps + 1)]
    names = [name for name, size in sizes if size]
    ids = np.concatenate([np.full(size, names.index(name), np.int32)
                          for name, size in sizes if size])
    return names, ids


def assemble(pieces: Sequence[np.ndarray], base_len: int, rows: int) -> np.ndarray:
    """The full ``[B, H, T, T]`` matrix (T = N + K·M) of one layer from the captured calls: the
    base pass ``[B, H, N, N]``, then step k's ``[B, H, M, N + k·M]`` (zeros where a row cannot
    look: base tokens never see blocks, block k never sees later blocks)."""
    steps = len(pieces) - 1
    total = base_len + steps * rows
    b, h = pieces[0].shape[:2]
    full = np.zeros((b, h, total, total), np.float32)
    full[:, :, :base_len, :base_len] = pieces[0]
    for k, piece in enumerate(pieces[1:], 1):
        lo = base_len + (k - 1) * rows
        if piece.shape[2:] != (rows, lo + rows):
            raise ValueError(f"reasoning step {k}: captured attention of shape {piece.shape}, "
                             f"expected [B, H, {rows}, {lo + rows}] (KV-cached steps)")
        full[:, :, lo:lo + rows, :lo + rows] = piece
    return full


def segment_maps(weights: np.ndarray, segment_ids: np.ndarray, valid: np.ndarray,
                 num_segments: int) -> np.ndarray:
    """``weights: [B, H, T, T]``, ``valid: bool[B, T]`` → ``[H, S, S]``: entry (a, b) is the mean
    over valid query tokens of segment a of their total weight on segment b's keys."""
    onehot = np.eye(num_segments, dtype=np.float64)[segment_ids]  # [T, S]
    per_row = weights.astype(np.float64) @ onehot  # [B, H, T, S]
    v = valid.astype(np.float64)
    numer = np.einsum("bhts,bt,ta->has", per_row, v, onehot)
    count = np.einsum("bt,ta->a", v, onehot)
    return (numer / np.maximum(count, 1.0)[None, :, None]).astype(np.float32)


def uniform_weights(visible: np.ndarray) -> np.ndarray:
    """``visible: bool[B, T, T]`` → ``[B, 1, T, T]``: each row spread evenly over its keys."""
    weights = visible.astype(np.float64)
    return (weights / weights.sum(axis=-1, keepdims=True))[:, None]


def attention_maps(workdir: str | Path, *, split: str = "validation",
                   examples: int = MAX_EXAMPLES) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Segment names, maps ``f32[L, H, S, S]`` of a workdir's best checkpoint and the uniform
    maps ``f32[S, S]`` over the same examples and mask."""

    from onepiece_jax.data.loader import BatchIterator, device_batch
    from onepiece_jax.model.attention import CAPTURE
    from onepiece_jax.train.loop import load_workdir_config, make_job, restore_state
    from onepiece_jax.train.step import eval_params

    workdir = Path(workdir)
    job = make_job(load_workdir_config(workdir), workdir)
    arrays = job.data.load_split(split)
    state, _ = restore_state(job, arrays, "best")
    batch = next(BatchIterator(arrays, examples, shuffle=False, seed=0,
                               group_size=job.group_size, regroup=True))
    dev = job.put(device_batch(batch))
    variables = {"params": eval_params(state)}
    _, captured = job.model.apply(variables, dev, job.catalog, train=False, mutable=[CAPTURE])
    _, valid = job.model.apply(variables, dev, job.catalog, method="embed")
    cfg = job.model.config
    layout = cfg.layout()
    names, ids = segment_layout(layout, cfg.reasoning_steps)
    rows = layout.block_rows
    keep = np.asarray(batch["example_mask"])
    base_valid = np.asarray(valid)[keep]
    start = layout.block_start
    block_valid = np.tile(base_valid[:, start:start + rows], (1, cfg.reasoning_steps))
    full_valid = np.concatenate([base_valid, block_valid], axis=1)
    layers = captured[CAPTURE]["encoder"]
    maps = []
    for i in range(cfg.num_layers):
        pieces = [np.asarray(p)[keep] for p in layers[f"layer_{i}"]["attn"]["weights"]]
        full = assemble(pieces, layout.length, rows)
        maps.append(segment_maps(full, ids, full_valid, len(names)))
    visible = np.asarray(job.model.apply(variables, valid, cfg.reasoning_steps,
                                         method="full_mask"))[keep][:, 0]
    uniform = segment_maps(uniform_weights(visible), ids, full_valid, len(names))[0]
    return names, np.stack(maps), uniform


def save_attention_maps(workdir: str | Path) -> Path:
    names, maps, uniform = attention_maps(workdir)
    path = Path(workdir) / "attention.npz"
    np.savez(path, maps=maps, uniform=uniform, segments=np.array(names))
    return path


def plot_attention(maps: np.ndarray, names: Sequence[str], title: str, path: Path) -> None:
    """A layers × heads grid of segment × segment heatmaps, one shared colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = maps.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(2.9 * heads + 1.2, 2.8 * layers + 0.8),
                             squeeze=False)
    # grey: cells the mask never lets attend (base tokens -> reasoning blocks)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = None
    for li in range(layers):
        for hi in range(heads):
            ax = axes[li, hi]
            cells = maps[li, hi]
            image = ax.imshow(np.ma.masked_equal(cells, 0.0), vmin=0.0, vmax=1.0, cmap=cmap)
            for (qi, ki), value in np.ndenumerate(cells):
                if value > 0:
                    ax.text(ki, qi, f"{value:.2f}"[1:], ha="center", va="center", fontsize=5,
                            color="white" if value < 0.6 else "black")
            ax.set_xticks(range(len(names)), names, fontsize=7, rotation=90)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_title(f"layer {li + 1}, head {hi + 1}", fontsize=8)
            if hi == 0:
                ax.set_ylabel("query segment", fontsize=8)
            if li == layers - 1:
                ax.set_xlabel("key segment", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention mass (rows sum to 1)")
    fig.suptitle(f"{title}\nmean attention mass of a query segment's tokens on each key "
                 "segment; grey: masked (base tokens never see reasoning blocks)", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def attention_section(records: Sequence, out_dir: Path) -> list[str]:
    """Report lines per variant (mode): the first seed's maps as a PNG, the last layer's
    head-mean table over seeds and the most specialised heads, seed by seed.

    A head's index means nothing across seeds (training can put the same role in any head), so
    nothing indexed by head is averaged over seeds: the PNG is one seed, the table averages over
    heads first, and the specialised heads are found in each seed separately."""
    lines = ["## Attention by segment", ""]
    for name in dict.fromkeys(r.variant.name for r in records if r.done and r.variant.trains):
        mine = [r for r in records if r.variant.name == name]
        variant = mine[0].variant
        found = [(r.seed, r.workdir / "attention.npz") for r in mine
                 if (r.workdir / "attention.npz").is_file()]
        if not found:
            continue
        loaded = [np.load(f) for _, f in found]
        names = [str(n) for n in loaded[0]["segments"]]
        png = f"attention_{variant.name}.png"
        plot_attention(loaded[0]["maps"], names, f"{variant.label}, seed {found[0][0]}, "
                       "averaged over validation examples", out_dir / png)
        last = np.mean([d["maps"][-1].mean(axis=0) for d in loaded], axis=0)
        uniform = (np.mean([d["uniform"] for d in loaded], axis=0)
                   if all("uniform" in d for d in loaded) else None)
        rows = [[q, *(_cell(last[i, j], None if uniform is None else uniform[i, j])
                      for j in range(len(names)))] for i, q in enumerate(names)]
        note = ("cell = attention mass (the share uniform attention over the same visible keys "
                "would give); a mass above its uniform share means the segment is sought out"
                if uniform is not None else "uniform shares not saved with these maps")
        lines += [f"### {variant.label}", "", f"![{variant.label}]({png})", "",
                  f"Last layer, mean over heads and {len(found)} seed(s) (row = query segment, "
                  f"column = key segment; {note}):",
                  "", "| query \\ key | " + " | ".join(names) + " |",
                  "|" + "---|" * (len(names) + 1),
                  *("| " + " | ".join(row) + " |" for row in rows), ""]
        if uniform is not None:
            seeds = ", ".join(str(seed) for seed, _ in found)
            top = strongest_heads([d["maps"] for d in loaded], uniform)
            lines += [f"The {len(top)} query → key pairs whose strongest head (any layer) gives "
                      f"the largest mass / uniform share, mean over seeds; pairs whose strongest "
                      f"head has a mean mass under {MIN_MASS} are left out. Per seed: the "
                      "strongest head's mass (layer.head):", "",
                      f"| query → key | uniform share | seeds {seeds} | mean ratio |",
                      "|---|---|---|---|",
                      *(f"| {names[q]} → {names[k]} | {uniform[q, k]:.2f} | "
                        + ", ".join(f"{m:.2f} ({li + 1}.{hi + 1})" for m, li, hi in per_seed)
                        + f" | {ratio:.1f}× |"
                        for q, k, per_seed, ratio in top), ""]
    return lines


MIN_MASS = 0.1


def strongest_heads(per_seed: Sequence[np.ndarray], uniform: np.ndarray, count: int = 8
                    ) -> list[tuple[int, int, list[tuple[float, int, int]], float]]:
    """The specialised heads a head-mean hides (the paper's SD→IH or CIS→IH heads).

    ``per_seed``: each seed's maps ``[L, H, S, S]``. For every visible (query, key) segment
    pair, each seed's strongest head (mass, layer, head); pairs are ranked by the mean over
    seeds of that mass / the uniform share, those with mean mass under ``MIN_MASS`` dropped.
    Returns ``count`` of (query, key, per-seed strongest heads, mean ratio)."""
    pairs = []
    for q, k in np.argwhere(uniform > 0):
        heads = []
        for maps in per_seed:
            cells = maps[:, :, q, k]
            li, hi = np.unravel_index(int(cells.argmax()), cells.shape)
            heads.append((float(cells[li, hi]), int(li), int(hi)))
        mass = float(np.mean([m for m, _, _ in heads]))
        if mass >= MIN_MASS:
            pairs.append((int(q), int(k), heads, mass / float(uniform[q, k])))
    return sorted(pairs, key=lambda pair: pair[3], reverse=True)[:count]


def _cell(mass: float, uniform: float | None) -> str:
    if uniform is None:
        return f"{mass:.2f}"
    return "–" if uniform == 0 else f"{mass:.2f} ({uniform:.2f})"
