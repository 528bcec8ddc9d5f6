"""`make demo`: the first five minutes, on the embedded SmolLM2 and 2 CPU cores.

1. Train a small InnerPiSSA adapter for the visible concept (sentiment: cheerful vs gloomy personas).
2. Show greedy continuations of a few held-out neutral prompts at c = -1, 0, +1, one under the other.
3. Print a number that moves with c: the VADER sentiment of continuations of more held-out prompts (the
   `test` split: the demo's settings were chosen on the `dev` split, docs/RESULTS.md), mean with a bootstrap
   CI at each c and its change vs c = 0 paired over prompts, plus fluency (NLL under the unsteered model,
   distinct-2).
4. The research part: a small honesty adapter on a short DailyDilemmas table (on a 135M model persona
   prompting itself moves this score by ~0, so expect ~0 here too: docs/RESULTS.md).

Everything goes under one run folder, whose path is printed first. The full-size settings are the
`smollm2-cpu` preset and `innerpissa compare --task generation` (docs/RESULTS.md).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_COEFFS = (-1.0, 0.0, 1.0)
LABELS = {-1.0: "gloomy  ", 0.0: "base    ", 1.0: "cheerful"}


@dataclass
class ScoreRow:
    """The concept score of one coefficient's continuations, and its change vs c = 0 paired over prompts."""

    c: float
    mean: float
    lo: float
    hi: float
    delta: float
    delta_lo: float
    delta_hi: float
    nll: float
    distinct2: float


def demo_train_config(concept: str, model: str, out: Path, n_pairs: int, epochs: int):
    """The demo's training run: the `smollm2-cpu` method (8 blocks) at a budget that fits a few CPU minutes:
    r 64, no accumulation, no early stop; 96 pairs x 2 epochs is the budget of the 3-seed sentiment comparison
    and of the dev-split ablation that chose it (docs/RESULTS.md)."""
    from innerpissa.train.config import preset

    cfg = preset("smollm2-cpu")
    cfg.model, cfg.out, cfg.overwrite, cfg.progress = model, out, True, False
    cfg.data.builtin = concept
    cfg.data.n_pairs, cfg.epochs, cfg.grad_accum, cfg.patience = n_pairs, epochs, 1, 0
    cfg.adapter.r = 64
    return cfg


def score_table(df, n_boot: int = 1000) -> list[ScoreRow]:
    """Per coefficient: mean concept score with a percentile bootstrap CI over prompts, its change vs c = 0
    with a paired bootstrap CI (the same prompts resampled at both coefficients), mean NLL and distinct-2."""
    from innerpissa.eval.stats import bootstrap_mean_ci, paired_mean_ci

    base = df[df.c == 0.0].set_index("prompt_idx")["score"]
    rows = []
    for c, g in df.groupby("c", sort=True):
        lo, hi = bootstrap_mean_ci(g["score"].to_numpy(), n_boot=n_boot)
        delta, dlo, dhi = paired_mean_ci(g.set_index("prompt_idx")["score"], base, n_boot=n_boot)
        if c == 0.0:
            dlo = dhi = 0.0
        rows.append(ScoreRow(float(c), float(g["score"].mean()), lo, hi, delta, dlo, dhi,
                             float(np.nanmean(g["nll"])), float(g["distinct2"].mean())))
    return rows


def verdict(rows: list[ScoreRow]) -> str:
    """Is the score monotone in c, and does the paired CI of the change at c = +1 and c = -1 exclude 0?"""
    by_c = {r.c: r for r in rows}
    means = [r.mean for r in sorted(rows, key=lambda r: r.c)]
    monotone = all(a < b for a, b in zip(means, means[1:], strict=False))
    up, down = by_c[1.0].delta_lo > 0, by_c[-1.0].delta_hi < 0
    return (f"monotone in c: {'yes' if monotone else 'NO'}; change at c=+1 above 0 (paired CI): "
            f"{'yes' if up else 'NO'}; change at c=-1 below 0 (paired CI): {'yes' if down else 'NO'}")


def print_table(rows: list[ScoreRow]) -> None:
    print("    c   sentiment [95% CI]         change vs c=0 [paired 95% CI]   NLL (unsteered)  distinct-2")
    for r in rows:
        print(f"  {r.c:+.0f}   {r.mean:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]    {r.delta:+.3f} [{r.delta_lo:+.3f}, "
              f"{r.delta_hi:+.3f}]          {r.nll:.3f}            {r.distinct2:.3f}")
    print(f"  {verdict(rows)}")


def run_demo(args) -> None:
    from innerpissa.adapter import load_adapter
    from innerpissa.data.dilemmas import resolve_dir
    from innerpissa.eval.gen_metrics import make_scorer
    from innerpissa.eval.generation import evaluate_generation, load_neutral_prompts
    from innerpissa.models import load_model
    from innerpissa.steering import AdapterSteerer
    from innerpissa.train.runfolder import default_out
    from innerpissa.train.trainer import train

    out = Path(args.out) if args.out is not None else default_out("demo")
    data_dir = getattr(args, "data_dir", None)
    honesty = not getattr(args, "skip_honesty", False)
    if honesty and resolve_dir(data_dir) is None and importlib.util.find_spec("datasets") is None:
        raise FileNotFoundError(
            "the demo's honesty table needs DailyDilemmas and none was found: pass --data-dir FOLDER (or set "
            "$INNERPISSA_DILEMMAS_DIR), run from the folder where ../shared/data/daily_dilemmas exists, "
            "pip install 'innerpissa[hub]' to fetch it from the Hugging Face hub, or pass --skip-honesty")
    print(f"innerpissa demo: everything is written under {out.resolve()}")
    t_all = time.time()

    # 1. the visible concept
    cfg = demo_train_config("sentiment", args.model, out / "sentiment", args.n_pairs, args.epochs)
    t0 = time.time()
    print(f"\n[1/4] training a sentiment adapter on {cfg.model} ({cfg.data.n_pairs} cheerful/gloomy pairs, "
          f"{cfg.epochs} epochs, r {cfg.adapter.r}) ...")
    result = train(cfg)
    val = result.summary.get("final_validation", {})
    print(f"      trained in {time.time() - t0:.0f}s; validation pairs ordered g(-1)<0<g(+1): "
          f"{val.get('val_ordered_fwd', float('nan')):.0%}")

    model, tok = load_model(cfg.model)
    load_adapter(model, result.adapter_path)
    steerer = AdapterSteerer(model)
    scorer = make_scorer("builtin", "sentiment")
    prompts = load_neutral_prompts("test")[: args.n_prompts]
    df = evaluate_generation(model, tok, prompts, steerer, DEMO_COEFFS, scorer, max_new_tokens=args.max_new_tokens)
    df.drop(columns=["ids"]).to_csv(out / "sentiment_generations.csv", index=False)

    # 2. continuations, one under the other
    print(f"\n[2/4] greedy continuations of held-out prompts at c = -1, 0, +1 ({args.max_new_tokens} tokens)")
    for i in range(min(args.n_show, len(prompts))):
        print(f"\n  ### {prompts[i]}")
        for c in DEMO_COEFFS:
            text = df[(df.prompt_idx == i) & (df.c == c)]["continuation"].iloc[0]
            print(f"  c={c:+.0f} {LABELS[c]}| {' '.join(text.split())}")

    # 3. the number
    rows = score_table(df)
    print(f"\n[3/4] VADER sentiment of the continuations of {len(prompts)} held-out prompts "
          "(-1 gloomy .. +1 cheerful; mean [95% bootstrap CI over prompts])")
    print_table(rows)

    # 4. the research part
    if honesty:
        _honesty_part(args, out, data_dir)
    print(f"\ndemo finished in {time.time() - t_all:.0f}s; outputs in {out.resolve()}")


def _honesty_part(args, out: Path, data_dir) -> None:
    from innerpissa.cli_eval import EvalConfig, eval_main
    from innerpissa.train.trainer import train

    cfg = demo_train_config("honesty", args.model, out / "honesty", args.honesty_pairs, args.honesty_epochs)
    t0 = time.time()
    print(f"\n[4/4] research part: an honesty adapter ({cfg.data.n_pairs} pairs) on {args.n_dilemmas} random "
          "DailyDilemmas; on a 135M model persona prompting itself barely moves this score (see docs/RESULTS.md)")
    result = train(cfg)
    print(f"      trained in {time.time() - t0:.0f}s")
    eval_main(EvalConfig(adapter=result.adapter_path, model=cfg.model, coeffs=DEMO_COEFFS,
                         n_dilemmas=args.n_dilemmas, out=out / "honesty_eval", examples=False, n_boot=300,
                         batch_size=8, data_dir=data_dir))
