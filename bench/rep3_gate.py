"""Where to put the repetition gate (`--gen.max-rep3`, issue 17 A.2): the repeated-3-gram fraction of the
unsteered SmolLM2 continuations of the `dev` prompts beside that of obviously degenerate steered ones (the
mean-difference vector pushed to ±2 and ±4 mean persona differences, past the fluency budget).

    HF_HUB_OFFLINE=1 nice -n 15 .venv/bin/python bench/rep3_gate.py --out /tmp/rep3_gate.csv

Prints, per c, the rep-3 quantiles and how many rows each candidate gate would drop, and a few rows around
the candidate gates. Dev prompts only (the test prompts are never looked at to choose the gate).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="rep3_gate.csv")
    ap.add_argument("--coeffs", type=float, nargs="+", default=[-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0])
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()

    from innerpissa.baselines.registry import build_baseline
    from innerpissa.data.config import make_pairs
    from innerpissa.eval.gen_metrics import make_scorer
    from innerpissa.eval.generation import evaluate_generation, load_neutral_prompts
    from innerpissa.models import load_model
    from innerpissa.train.config import preset

    model, tok = load_model("smollm2")
    cfg = preset("smollm2-cpu")
    cfg.data.builtin, cfg.data.n_pairs = "sentiment", 96
    pairs, _ = make_pairs(cfg.data, 0, tok)
    steerer = build_baseline("mean_diff", model, tok, pairs, seed=0, coeffs=args.coeffs)
    prompts = load_neutral_prompts("dev")
    df = evaluate_generation(model, tok, prompts, steerer, steerer.default_coeffs, make_scorer("vader"),
                             args.max_new_tokens)
    df.drop(columns=["ids"]).to_csv(args.out, index=False)
    q = [0.5, 0.9, 0.95, 1.0]
    print("c | n | is_valid | rep3 quantiles " + " / ".join(f"q{x:g}" for x in q) + " | rows with rep3 > 0.1/0.2/0.3")
    for c, g in df.groupby("c"):
        r = g["rep3"].to_numpy()
        print(f"{c:+g} | {len(g)} | {g['valid'].mean():.0%} | " + " / ".join(f"{v:.3f}" for v in np.nanquantile(r, q))
              + " | " + " / ".join(str(int((r > t).sum())) for t in (0.1, 0.2, 0.3)))
    pd.set_option("display.max_colwidth", 160)
    top = df.sort_values("rep3", ascending=False)
    print(top[["c", "rep3", "distinct2", "valid", "continuation"]].head(40).to_string())


if __name__ == "__main__":
    main()
