"""Our PCA vectors vs the real repeng 0.4.0 on a real model: per-layer cosines and norms.

    INNERPISSA_REPENG_PYTHON=/path/to/repeng-venv/bin/python \\
        .venv/bin/python bench/repeng_parity.py [--model smollm2] [--layers 12-23] [--out repeng_parity.json]

The training pairs are the default run's (`make_pairs(TrainConfig().data, seed)`: 170 training pairs of the
built-in honesty set). It computes repeng's own vectors (`train_repeng_external`: repeng in its virtualenv on
this model saved with `save_pretrained`), our default `pca` (repeng style) and the earlier `style="v0"`
vector, and prints, per layer, cos(v0, repeng), cos(ours, repeng) and the norms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layers", default="12-23", help="first-last block, inclusive")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()

    from innerpissa.baselines.external import train_repeng_external
    from innerpissa.baselines.vectors import train_vectors
    from innerpissa.data.config import make_pairs
    from innerpissa.models import load_model
    from innerpissa.train.config import TrainConfig

    lo, hi = (int(x) for x in args.layers.split("-"))
    layers = list(range(lo, hi + 1))
    model, tok = load_model(args.model)
    pairs, _ = make_pairs(TrainConfig(model=args.model).data, args.seed, tok)
    t0 = time.time()
    repeng = train_repeng_external(model, tok, pairs, layers=layers)
    t_repeng = time.time() - t0
    t0 = time.time()
    ours = train_vectors(model, tok, pairs, "pca", layers=layers)
    t_ours = time.time() - t0
    v0 = train_vectors(model, tok, pairs, "pca", layers=layers, style="v0")
    rows = []
    for layer in layers:
        r, o, old = repeng.vectors[layer], ours.vectors[layer], v0.vectors[layer]
        rows.append({"layer": layer, "cos_v0_repeng": _cos(old, r), "cos_ours_repeng": _cos(o, r),
                     "norm_repeng": float(r.norm()), "norm_ours": float(o.norm()), "norm_v0": float(old.norm())})
        print(f"layer {layer:2d}  cos(v0, repeng) {rows[-1]['cos_v0_repeng']:+.4f}  "
              f"cos(ours, repeng) {rows[-1]['cos_ours_repeng']:.6f}  norms repeng {rows[-1]['norm_repeng']:.6f} "
              f"ours {rows[-1]['norm_ours']:.6f} v0 {rows[-1]['norm_v0']:.3f}")
    old = [r["cos_v0_repeng"] for r in rows]
    new = [r["cos_ours_repeng"] for r in rows]
    norm_gap = max(abs(r["norm_ours"] - r["norm_repeng"]) for r in rows)
    summary = {"model": args.model, "n_pairs": len(pairs), "layers": layers, "versions": repeng.meta["versions"],
               "v0_vs_repeng": {"min": min(old), "median": statistics.median(old), "max": max(old)},
               "ours_vs_repeng_min_cos": min(new), "max_norm_gap": norm_gap,
               "seconds": {"repeng_external": t_repeng, "ours": t_ours}, "rows": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
