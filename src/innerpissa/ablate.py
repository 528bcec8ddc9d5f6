"""`innerpissa ablate`: named training variants x seeds on the same pairs, scored on the same rows.

The variant loop (`run_variants`) knows nothing about the evaluation: it trains (or reuses) each variant's
adapter, wraps it in an `AdapterSteerer` named after the variant and hands it to a `ScoreFn`, which returns
a results frame. The built-in task scores DailyDilemmas through the `compare` machinery (the same harness,
tables and dose-response plot, with variants in place of methods); another task (e.g. generations) only
needs its own `ScoreFn` and report.

Variants should be chosen on one split of the dilemmas and reported on the other, so the headline is not
tuned on what it reports: `split="select"` and `split="test"` are two disjoint halves of the dilemmas
(fixed by `split_seed`), each sampled with `sample_seed`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from innerpissa.methods import (
    Runs,
    summary_tag,
    train_changes,
    train_config,
    train_or_load,
)

#: (steerer, training seed, cache tag) -> results frame (one row per scored item and coefficient)
ScoreFn = Callable[..., pd.DataFrame]


@dataclass
class Ablate(Runs):
    """Train named variants of a preset (see innerpissa.train.variants) and score them on the same rows."""

    variants: tuple[str, ...] = ("default-v0", "faithful", "preset")
    """Variant names (innerpissa.train.variants.VARIANTS), each applied to the training settings."""
    out: Path = Path("runs/ablate")
    """Output folder: train/<variant>_seed<k>/, cache/, sample.csv, training.csv and the report."""
    split: Literal["select", "test"] = "select"
    """Which half of the dilemmas to score: `select` to choose variants, `test` to report them (generation
    task: the `dev` or `test` prompts)."""
    split_seed: int = 12345
    """Seed of the fixed half/half split of dilemma ids."""
    coeffs: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """Coefficients every variant is scored at."""
    max_new_tokens: int = 32
    """Generation task: greedy tokens per continuation."""

    def run(self) -> None:
        paths = run_ablate(self)
        print(f"\nsummary: {paths['summary']}\nplot: {paths['plot']}")


def variant_config(ab: Ablate, name: str, seed: int):
    from innerpissa.train.variants import apply_variant

    base = train_config(ab, seed, name=name)
    cfg = apply_variant(name, base)
    cfg.data = base.data  # every variant trains on the same pairs (default-v0 would otherwise take 200)
    if ab.epochs is not None:
        cfg.epochs = ab.epochs
    cfg.out = base.out
    return cfg


def run_variants(model, tok, configs: Sequence[tuple[str, int, object]], score: ScoreFn,
                 coeffs: Sequence[float]) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Train (or reuse) each (variant, seed, TrainConfig) on `model` and score it with `score(steerer, seed,
    tag)`. Returns the score frames and one line of training facts per variant and seed (steps, seconds,
    % of validation pairs ordered g(-1) < 0 < g(+1), calibration). The model is left without an adapter."""
    from innerpissa.adapter import adapter_layers, detach_adapter
    from innerpissa.steering import AdapterSteerer

    frames, facts = [], []
    for name, seed, cfg in configs:
        t0 = time.time()
        summary = train_or_load(cfg, model, tok)
        cal = summary.get("calibration") or {}
        facts.append({"variant": name, "seed": seed, "steps": summary.get("steps"),
                      "train_seconds": summary.get("train_seconds"),
                      "val_ordered_pct": summary.get("val_ordered_pct"), "flipped": cal.get("flipped"),
                      "probe_effect": cal.get("probe_effect"), "persona_effect": cal.get("persona_effect")})
        try:
            res = score(AdapterSteerer(model, name=name, coeffs=coeffs), seed, summary_tag(summary))
        finally:
            if adapter_layers(model):
                detach_adapter(model)
        res["train_seconds"] = summary.get("train_seconds") or 0.0
        frames.append(res)
        print(f"  {name:12s} seed {seed}: ordered {facts[-1]['val_ordered_pct']}% of validation pairs, "
              f"done in {time.time() - t0:.0f}s", flush=True)
    return frames, pd.DataFrame(facts)


def dilemma_half(data: pd.DataFrame, ab: Ablate) -> pd.DataFrame:
    """The rows of one fixed half of the dilemma ids (`split`: select or test; never the other half)."""
    ids = np.array(sorted(data["dilemma_idx"].unique()))
    perm = np.random.default_rng(ab.split_seed).permutation(ids)
    half = perm[: len(perm) // 2] if ab.split == "select" else perm[len(perm) // 2:]
    return data[data["dilemma_idx"].isin(set(half.tolist()))]


def run_ablate(ab: Ablate) -> dict[str, Path]:
    """Every variant x seed on the same pairs and the same DailyDilemmas rows; one table and one plot."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from innerpissa.data.dilemmas import load_dilemmas
    from innerpissa.models import load_model
    from innerpissa.train.variants import VARIANTS

    unknown = [v for v in ab.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if ab.task == "generation":
        return run_ablate_generation(ab)
    t_start = time.time()
    out = Path(ab.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [(v, s, variant_config(ab, v, s)) for v in ab.variants for s in ab.seeds]
    models = {c.model for _, _, c in configs}
    if len(models) != 1:
        raise SystemExit(f"variants must share one base model, got {sorted(models)}")
    base_cfg = configs[0][2]
    model, tok = load_model(base_cfg.model, dtype=base_cfg.dtype, device=ab.torch_device())
    rows, axes = ab.draw_rows(ab.sample_seed, out, [ab.target], data=dilemma_half(load_dilemmas(ab.data_dir), ab))
    print(f"ablation on {rows['dilemma_idx'].nunique()} dilemmas ({ab.split} half); variants {list(ab.variants)}; "
          f"seeds {list(ab.seeds)}", flush=True)

    def score(steerer, seed: int, tag: str) -> pd.DataFrame:
        return ab.score(model, tok, rows, steerer, ab.coeffs, axes, out, seed=seed, tag=tag)

    frames, facts = run_variants(model, tok, configs, score, ab.coeffs)
    facts.to_csv(out / "training.csv", index=False)
    ordered = facts.groupby("variant")["val_ordered_pct"].agg(["mean", "min"]).round(1)
    info = {
        "model": base_cfg.model, "preset": ab.preset, "seeds": list(ab.seeds),
        "rows": f"{len(rows)} ({ab.split} half of the dilemmas, split seed {ab.split_seed}, sample seed {ab.sample_seed})",
        "overrides": train_changes(ab),
        "validation pairs ordered g(-1)<0<g(+1), % (mean, min over seeds)":
            json.dumps({v: [r["mean"], r["min"]] for v, r in ordered.iterrows()}),
        "wall time": f"{time.time() - t_start:.0f} s",
    }
    paths = ab.report(out, pd.concat(frames, ignore_index=True), axes, ab.sample_seed, info)
    paths["training"] = out / "training.csv"
    return paths


def run_ablate_generation(ab: Ablate) -> dict[str, Path]:
    """Every variant x seed on the same pairs, scored on the same held-out neutral prompts (dev prompts for
    `split="select"`, test prompts for `split="test"`): the concept range at matched fluency per variant."""
    from innerpissa.compare_generation import GenerationTask, generation_report

    t_start = time.time()
    out = Path(ab.out)
    configs = [(v, s, variant_config(ab, v, s)) for v in ab.variants for s in ab.seeds]
    base_cfg = configs[0][2]
    if len({c.model for _, _, c in configs}) != 1:
        raise SystemExit("variants must share one base model")
    concept = base_cfg.data.builtin
    split = "dev" if ab.split == "select" else "test"
    task = GenerationTask.load(base_cfg, ab.torch_device(), split, ab.n_prompts, ab.max_new_tokens, out, concept)
    model, tok, prompts, scorer = task.model, task.tok, task.prompts, task.scorer
    print(f"generation ablation on {len(prompts)} {split} prompts; variants {list(ab.variants)}; seeds "
          f"{list(ab.seeds)}", flush=True)

    def score(steerer, seed: int, tag: str) -> pd.DataFrame:
        scored = [c for c in ab.coeffs if c != 0]
        return task.scored(steerer, steerer.name, seed, tag, scored).assign(method=steerer.name, seed=seed)

    base = task.base()
    frames, facts = run_variants(model, tok, configs, score, ab.coeffs)
    facts.to_csv(out / "training.csv", index=False)
    df = pd.concat([pd.concat([base.assign(method=f["method"].iloc[0], seed=f["seed"].iloc[0]), f])
                    for f in frames], ignore_index=True)
    ordered = facts.groupby("variant")["val_ordered_pct"].agg(["mean", "min"]).round(1)
    meta = {"model": base_cfg.model, "preset": ab.preset, "concept": concept, "seeds": list(ab.seeds),
            "prompts": f"{len(prompts)} ({split} split)", "new tokens": ab.max_new_tokens, "scorer": scorer.name,
            "overrides": train_changes(ab),
            "validation pairs ordered g(-1)<0<g(+1), % (mean, min over seeds)":
                json.dumps({v: [r["mean"], r["min"]] for v, r in ordered.iterrows()}),
            "wall time": f"{time.time() - t_start:.0f} s"}
    paths = generation_report(out, df, ab, meta)
    paths["training"] = out / "training.csv"
    return paths
