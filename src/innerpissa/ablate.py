"""`innerpissa ablate`: named training variants x seeds on the same pairs, scored on the same items.

One loop over the evaluation `Task` (`eval/task.py`): `task.base()` (c = 0, shared), then per variant and
seed the adapter is trained (or reused, retrained when its settings changed), wrapped in an `AdapterSteerer`
named after the variant and scored with `task.score`, then `task.report`. Either task works: DailyDilemmas
rows or greedy continuations of held-out prompts (`--task generation`, `--gen.*`).

Variants should be chosen on one split and reported on the other, so the headline is not tuned on what it
reports: `split="select"` and `split="test"` are two disjoint halves of the dilemmas (fixed by `split_seed`,
each sampled with `sample_seed`), and for generation the `dev` and `test` prompts. On the generation task
each variant's strength per side is chosen with `compare`'s rule (`eval/matching.py`: the grid `coeffs`
extended until each side leaves the largest budget, c* interpolated to every --gen.budgets) on the scored
prompts themselves, which are the choosing split.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from innerpissa.eval.settings import FINE_GRID, GenSettings
from innerpissa.eval.task import Task
from innerpissa.methods import Runs, open_task, score_with_base, train_changes, train_config, train_or_load

#: the dilemma task's default coefficients (the generation task starts from compare's grid)
DILEMMA_COEFFS = (-1.0, -0.5, 0.0, 0.5, 1.0)


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
    coeffs: tuple[float, ...] | None = None
    """Coefficients every variant is scored at (c = 0 is the base model, scored once; default -1 -0.5 0 0.5 1);
    on the generation task the starting grid, extended automatically (default: compare's fine grid for trained
    methods, so a side stopped by validity is not read off a coarse grid)."""
    gen: GenSettings = field(default_factory=lambda: GenSettings(max_new_tokens=32))
    """Generation task settings."""

    def grid(self) -> tuple[float, ...]:
        """The coefficients (dilemmas) or the starting grid (generation) every variant is scored at."""
        if self.coeffs is not None:
            return tuple(self.coeffs)
        return FINE_GRID if self.task == "generation" else DILEMMA_COEFFS

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


def run_variants(task: Task, configs: Sequence[tuple[str, int, object]], coeffs: Sequence[float],
                 base: pd.DataFrame, matcher=None) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """Train (or reuse) each (variant, seed, TrainConfig) on the task's model and score it at `coeffs` (c = 0 is
    `base`, the shared unsteered frame), or, with a `matcher` (`eval.matching.Matcher`), run its protocol from
    the grid `coeffs` (the matcher keeps the frames). Returns the score frames and one line of training facts
    per variant and seed (steps, seconds, % of validation pairs ordered g(-1) < 0 < g(+1), calibration). The
    model is left without an adapter."""
    from innerpissa.adapter import adapter_layers, detach_adapter
    from innerpissa.steering import AdapterSteerer

    frames, facts = [], []
    for name, seed, cfg in configs:
        t0 = time.time()
        summary = train_or_load(cfg, task.model, task.tok)
        cal = summary.get("calibration") or {}
        facts.append({"variant": name, "seed": seed, "steps": summary.get("steps"),
                      "train_seconds": summary.get("train_seconds"),
                      "val_ordered_pct": summary.get("val_ordered_pct"), "flipped": cal.get("flipped"),
                      "probe_effect": cal.get("probe_effect"), "persona_effect": cal.get("persona_effect")})
        try:
            steerer = AdapterSteerer(task.model, name=name, coeffs=coeffs)
            if matcher is not None:
                matcher.run(steerer, coeffs, seed, summary.get("train_seconds") or 0.0)
            else:
                frames.append(score_with_base(task, base, steerer, coeffs if 0.0 in coeffs else [0.0, *coeffs], seed,
                                              summary.get("train_seconds") or 0.0))
        finally:
            if adapter_layers(task.model):
                detach_adapter(task.model)
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
    """Every variant x seed on the same pairs and the same items; one table and one plot."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from innerpissa.data.dilemmas import load_dilemmas
    from innerpissa.eval.report import write_csv
    from innerpissa.train.variants import VARIANTS

    unknown = [v for v in ab.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    t_start, out = time.time(), Path(ab.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [(v, s, variant_config(ab, v, s)) for v in ab.variants for s in ab.seeds]
    models = {c.model for _, _, c in configs}
    if len(models) != 1:
        raise SystemExit(f"variants must share one base model, got {sorted(models)}")
    if ab.task == "generation":
        task = open_task(ab, out, ab.gen.split or ("dev" if ab.split == "select" else "test"))
        items = task.describe()
    else:
        task = open_task(ab, out, data=dilemma_half(load_dilemmas(ab.data_dir), ab), axes=[ab.target])
        items = {"rows": f"{len(task.rows)} ({ab.split} half of the dilemmas, split seed {ab.split_seed}, sample "
                         f"seed {ab.sample_seed})"}
    print(f"ablation of {list(ab.variants)} over seeds {list(ab.seeds)} on the {ab.task} task", flush=True)
    matcher = None
    if ab.task == "generation":  # chosen and reported on the choosing split, with the compare protocol's rule
        from innerpissa.eval.matching import Matcher

        g = ab.gen
        matcher = Matcher(task, task, g.budgets, g.distinct_frac, g.min_valid, g.extend, g.refine)
    frames, facts = run_variants(task, configs, ab.grid(), matcher.dev_base if matcher else task.base(), matcher)
    write_csv(facts, out / "training.csv")
    ordered = facts.groupby("variant")["val_ordered_pct"].agg(["mean", "min"]).round(1)
    meta = {"model": configs[0][2].model, "preset": ab.preset,
            **({"concept": configs[0][2].data.builtin} if ab.task == "generation" else {}), "seeds": list(ab.seeds),
            **items, "overrides": train_changes(ab),
            "validation pairs ordered g(-1)<0<g(+1), % (mean, min over seeds)":
                json.dumps({v: [r["mean"], r["min"]] for v, r in ordered.iterrows()}),
            "wall time": f"{time.time() - t_start:.0f} s"}
    if matcher is not None:
        paths = task.report_matched(out, matcher, meta, chosen_on=f"the same {task.source} (ablate chooses variants "
                                                                  "here; report them on test with compare)")
    else:
        paths = task.report(out, frames, meta)
    paths["training"] = out / "training.csv"
    return paths
