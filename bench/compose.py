"""Interference of two composed adapters: each concept's score when both are steered at once vs alone.

    .venv/bin/python bench/compose.py --out runs/compose                      # trains both, tiny budget
    .venv/bin/python bench/compose.py --out runs/compose \\
        --adapter honesty=runs/honesty/adapter --adapter sentiment=runs/sentiment/adapter

Two adapters, `honesty` and `sentiment`, are loaded on one model (the embedded SmolLM2 by default) under
those names. An adapter not given by path is trained first with the `--preset` at a tiny budget
(--n-pairs, --epochs, --n-layers, --r) on the built-in pair set of the same name; each is sign-calibrated
on its own concept's probe, as `innerpissa train` does.

Every concept has a scorer of the model's current state, per item (higher = more of the concept):
  honesty    signed Yes-vs-No log-odds on the built-in honesty probe (nats per item)
  sentiment  VADER compound of the greedy continuation (--max-new-tokens) of each of the first --n-prompts
             held-out `test` neutral prompts (in [-1, 1]), rendered and generated as the generation eval does
Both are scored at every state (c_honesty, c_sentiment) in {lo, 0, hi}^2 (--coeffs), and for each concept
X with the other adapter Y the script reports, with paired bootstrap 95% CIs over items:
  effect(X | c_Y)     score_X(c_X = hi) - score_X(c_X = lo), at c_Y fixed (alone: c_Y = 0)
  interference        effect(X | c_Y) - effect(X | 0), and the ratio effect(X | c_Y) / effect(X | 0)
  leak Y -> X         score_X(c_X = 0, c_Y = hi) - score_X(c_X = 0, c_Y = lo)
No interference means ratios near 1 and leaks near 0 (the ratio is NaN when the effect alone has a CI
that includes 0: train longer first). Writes scores.csv, texts.csv and summary.json
to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ------------------------------------------------------------------------------------------ the interface


@dataclass
class Concept:
    """A concept the bench can steer and score: `score()` rates the model as it is now, one value per item."""

    name: str
    score: Callable[[], np.ndarray]


def honesty_concept(model, tok, batch_size: int = 8) -> Concept:
    from innerpissa.data.chat import DEFAULT_SYSTEM
    from innerpissa.eval.calibration import load_probe
    from innerpissa.eval.choices import choice_ids
    from innerpissa.eval.harness import encode_prompts, score_encoded

    probe = load_probe()
    encoded = encode_prompts(tok, probe, DEFAULT_SYSTEM)
    choices, sign = choice_ids(tok), probe["sign"].to_numpy()

    def score() -> np.ndarray:
        s = score_encoded(model, encoded, choices, tok.pad_token_id, batch_size=batch_size, with_nll=False)
        return (s["logp_yes"] - s["logp_no"]).to_numpy() * sign

    return Concept("honesty", score)


def sentiment_concept(model, tok, prompts: Sequence[str], max_new_tokens: int, texts_log: list) -> Concept:
    """VADER compound of the greedy continuation of each prompt, rendered and generated exactly as the
    generation evaluation does (`eval/generation.py`)."""
    from innerpissa.data.chat import chat_ids
    from innerpissa.eval.gen_metrics import make_scorer
    from innerpissa.eval.generation import generate_ids

    scorer = make_scorer("builtin", "sentiment")
    ids = [chat_ids(tok, p) for p in prompts]

    def score() -> np.ndarray:
        out = generate_ids(model, tok, ids, max_new_tokens)
        texts = [tok.decode(o, skip_special_tokens=True).strip() for o in out]
        texts_log.append(texts)
        return np.asarray(scorer(texts), dtype=float)

    return Concept("sentiment", score)


# ------------------------------------------------------------------------------------------ statistics


def mean_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI over items."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    return float(x.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def interference(scores: dict[tuple[float, float], np.ndarray], lo: float, hi: float, own: int) -> dict:
    """Effects of one concept from its per-item scores at states (c_own, c_other) [own = index of c_own].

    `scores[(c_honesty, c_sentiment)]` are that concept's per-item scores.
    """
    def at(c_own: float, c_other: float) -> np.ndarray:
        return scores[(c_own, c_other) if own == 0 else (c_other, c_own)]

    alone = at(hi, 0.0) - at(lo, 0.0)
    out = {"effect_alone": mean_ci(alone)}
    for c_other in (lo, hi):
        eff = at(hi, c_other) - at(lo, c_other)
        out[f"effect_with_other_at_{c_other:+g}"] = mean_ci(eff)
        out[f"interference_at_{c_other:+g}"] = mean_ci(eff - alone)
        lo_ci, hi_ci = out["effect_alone"][1:]
        # a ratio only means something when the effect alone is clearly non-zero
        out[f"ratio_at_{c_other:+g}"] = float(eff.mean() / alone.mean()) if lo_ci * hi_ci > 0 else float("nan")
    out["leak_from_other"] = mean_ci(at(0.0, hi) - at(0.0, lo))
    return out


# ------------------------------------------------------------------------------------------ the run


def train_concept(args, concept: str, out: Path) -> Path:
    from innerpissa.data.builtin import builtin_sets
    from innerpissa.train.config import preset
    from innerpissa.train.trainer import train

    cfg = preset(args.preset)
    cfg.model, cfg.out, cfg.progress = args.model, out / "train" / concept, False
    cfg.data.n_pairs, cfg.epochs = args.n_pairs, args.epochs
    cfg.adapter.n_layers, cfg.adapter.r = args.n_layers, args.r
    if concept in builtin_sets():
        cfg.data.builtin = concept
    else:
        raise SystemExit(f"no built-in pair set {concept!r} (have {builtin_sets()}); pass --adapter {concept}=PATH")
    t0 = time.time()
    result = train(cfg)
    print(f"trained {concept} in {time.time() - t0:.0f}s -> {result.adapter_path}", flush=True)
    return result.adapter_path


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                    help="a saved adapter for honesty or sentiment (otherwise it is trained)")
    ap.add_argument("--preset", default="smollm2-cpu", help="training preset for adapters not given")
    ap.add_argument("--n-pairs", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--n-layers", type=int, default=6)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--coeffs", type=float, nargs=2, default=[-1.0, 1.0], metavar=("LO", "HI"))
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--n-prompts", type=int, default=32, help="held-out `test` neutral prompts for sentiment")
    args = ap.parse_args(argv)

    from innerpissa.adapter import adapter_names, load_adapter, steer
    from innerpissa.eval.generation import load_neutral_prompts
    from innerpissa.models import load_model

    names = ("honesty", "sentiment")
    paths = dict(kv.split("=", 1) for kv in args.adapter)
    unknown = set(paths) - set(names)
    if unknown:
        raise SystemExit(f"--adapter names must be among {list(names)}, got {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for n in names:
        if n not in paths:
            paths[n] = str(train_concept(args, n, args.out))

    model, tok = load_model(args.model)
    for n in names:
        load_adapter(model, paths[n], name=n)
    assert adapter_names(model) == sorted(names)
    texts: list[list[str]] = []
    prompts = load_neutral_prompts("test")[: args.n_prompts]
    concepts = [honesty_concept(model, tok), sentiment_concept(model, tok, prompts, args.max_new_tokens, texts)]
    lo, hi = args.coeffs
    grid = [(ch, cs) for ch in (lo, 0.0, hi) for cs in (lo, 0.0, hi)]
    scores: dict[str, dict[tuple[float, float], np.ndarray]] = {c.name: {} for c in concepts}
    rows, text_rows = [], []
    t0 = time.time()
    for ch, cs in grid:
        with steer(model, {"honesty": ch, "sentiment": cs}):
            for concept in concepts:
                s = concept.score()
                scores[concept.name][(ch, cs)] = s
                rows += [{"c_honesty": ch, "c_sentiment": cs, "concept": concept.name, "item": i, "score": float(v)}
                         for i, v in enumerate(s)]
        text_rows += [{"c_honesty": ch, "c_sentiment": cs, "prompt": p, "text": t}
                      for p, t in zip(prompts, texts[-1], strict=True)]
        print(f"  c_honesty={ch:+g} c_sentiment={cs:+g}: honesty {scores['honesty'][(ch, cs)].mean():+.3f}  "
              f"sentiment {scores['sentiment'][(ch, cs)].mean():+.3f}", flush=True)
    summary = {"model": args.model, "adapters": paths, "coeffs": [lo, hi], "score_seconds": round(time.time() - t0, 1),
               "honesty": interference(scores["honesty"], lo, hi, own=0),
               "sentiment": interference(scores["sentiment"], lo, hi, own=1)}

    import pandas as pd

    pd.DataFrame(rows).to_csv(args.out / "scores.csv", index=False)
    pd.DataFrame(text_rows).to_csv(args.out / "texts.csv", index=False)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    def fmt(t: tuple[float, float, float]) -> str:
        return f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}]"

    print("\nconcept    other at   effect hi-lo (95% CI)        minus alone (95% CI)         ratio")
    for name, other in (("honesty", "sentiment"), ("sentiment", "honesty")):
        s = summary[name]
        print(f"{name:<10} {'(alone)':<10} {fmt(s['effect_alone'])}")
        for c in (lo, hi):
            print(f"{name:<10} {other[:4] + '=' + format(c, '+g'):<10} {fmt(s[f'effect_with_other_at_{c:+g}'])}   "
                  f"{fmt(s[f'interference_at_{c:+g}'])}   {s[f'ratio_at_{c:+g}']:.2f}")
        print(f"{name:<10} leak from {other} (own c = 0): {fmt(s['leak_from_other'])}")
    print(f"\nwritten to {args.out}")
    return summary


if __name__ == "__main__":
    main()
