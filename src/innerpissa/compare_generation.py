"""`innerpissa compare --task generation`: every method on the same concept pairs, evaluated by concept
expression in greedy continuations of the held-out neutral prompts (METHOD section 11).

Per seed the training pairs of the concept's built-in set are `make_pairs(seed)` (identical for every
method). InnerPiSSA and LoRA(c) go through the trainer (its sign calibration uses the concept's probe);
PCA and random vectors are calibrated on the same probe; mean-diff's sign is the pairs'; prompting uses the
concept's first persona pair appended to the default system message (c = +1 / 0 / -1). c = 0 is the base model
for every method and is generated once. Each (method, seed) sweep is cached on disk under a hash of what it
depends on, and trained methods are kept, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from innerpissa.methods import (
    DEFAULT_METHODS,
    TRAINED,
    cache_key,
    cached_frame,
    each_method,
    train_changes,
    train_config,
)

GEN_METHODS = ("innerpissa", "lora", "prompting", "pca", "mean_diff", "random")
#: vector sweeps in mean-difference units: fine near 0 (sentiment moves at |c| ~ 0.5 on SmolLM2) and wide
#: enough to lose fluency; the random control goes further, as it needs more push to do anything
GEN_VECTOR_COEFFS = {
    "mean_diff": (-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "pca": (-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "random": (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0),
}


@dataclass
class GenerationTask:
    """One generation evaluation shared by `compare` and `ablate`: the model, held-out prompts, scorer and
    the result cache (one file per steerer x seed x coefficient list, keyed by everything that decides it)."""

    model: Any
    tok: Any
    model_name: str
    prompts: list[str]
    scorer: Any
    max_new_tokens: int
    cache: Path
    max_batch: int | None = None

    @classmethod
    def load(cls, cfg, device, split: str, n_prompts: int | None, max_new_tokens: int, out: Path,
             concept: str, max_batch: int | None = None) -> GenerationTask:
        from innerpissa.eval.gen_metrics import concept_scorer
        from innerpissa.eval.generation import load_neutral_prompts
        from innerpissa.models import load_model

        (out / "cache").mkdir(parents=True, exist_ok=True)
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=device)
        prompts = load_neutral_prompts(split)
        prompts = prompts[:n_prompts] if n_prompts is not None else prompts
        return cls(model, tok, cfg.model, prompts, concept_scorer(concept), max_new_tokens, out / "cache", max_batch)

    def _key(self, *extra) -> str:
        from innerpissa.eval.harness import DEFAULT_SYSTEM

        return cache_key(self.model_name, self.prompts, self.max_new_tokens, DEFAULT_SYSTEM, self.scorer.name, *extra)

    def sweep(self, steerer, coeffs) -> pd.DataFrame:
        from innerpissa.eval.generation import evaluate_generation

        return evaluate_generation(self.model, self.tok, self.prompts, steerer, coeffs, self.scorer,
                                   self.max_new_tokens, max_batch=self.max_batch)

    def scored(self, steerer, name: str, seed: int, tag: str, coeffs) -> pd.DataFrame:
        """The steerer's continuations at `coeffs`, from the cache when this exact sweep ran before."""
        path = self.cache / f"{name}_seed{seed}_{self._key(tag, coeffs)}.json"
        return cached_frame(path, lambda: self.sweep(steerer, coeffs))

    def base(self) -> pd.DataFrame:
        """The unsteered model's continuations (c = 0, shared by every method and seed)."""
        from innerpissa.steering import NoSteering

        return cached_frame(self.cache / f"base_{self._key()}.json", lambda: self.sweep(NoSteering(), [0.0]))


def run_generation_compare(cmp) -> dict[str, Path]:
    """Run the generation comparison described by a `Compare` with `task="generation"`; returns report paths."""
    from innerpissa.adapter import adapter_parameters
    from innerpissa.baselines.common import fingerprint
    from innerpissa.eval.calibration import concept_probe

    concept = cmp.concept or "sentiment"
    methods = GEN_METHODS if tuple(cmp.methods) == DEFAULT_METHODS else tuple(cmp.methods)
    allowed = (*GEN_METHODS, "sspace", "steering_vectors")
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise SystemExit(f"method(s) {unknown} not available for --task generation; choose from {', '.join(allowed)}")
    t_start = time.time()
    out = Path(cmp.out)
    base_cfg = train_config(cmp, cmp.seeds[0])
    task = GenerationTask.load(base_cfg, cmp.torch_device(), cmp.prompt_split, cmp.n_prompts, cmp.max_new_tokens,
                               out, concept, cmp.gen_batch)
    model, tok, prompts, scorer = task.model, task.tok, task.prompts, task.scorer
    probe_name, probe = concept_probe(model, tok, concept)
    print(f"generation comparison: {len(prompts)} {cmp.prompt_split} prompts, {cmp.max_new_tokens} new tokens, "
          f"methods {list(methods)}, seeds {list(cmp.seeds)}", flush=True)
    base = task.base()
    frames, info = [], {}
    for b in each_method(cmp, methods, model, tok, probe, cmp.gen_adapter_coeffs, cmp.baseline_coeffs,
                         GEN_VECTOR_COEFFS):
        if b.info:
            info[f"{b.method}/seed{b.seed}"] = b.info
        tag = fingerprint(adapter_parameters(model), b.method) if b.method in TRAINED else b.tag
        res = task.scored(b.steerer, b.method, b.seed, tag, b.scored)
        if b.shared_zero:
            res = pd.concat([base, res], ignore_index=True)
        frames.append(res.assign(method=b.method, seed=b.seed))

    meta = {
        "model": base_cfg.model, "preset": cmp.preset, "concept": concept, "pairs per seed": cmp.n_pairs,
        "seeds": list(cmp.seeds), "prompts": f"{len(prompts)} ({cmp.prompt_split} split)",
        "new tokens": cmp.max_new_tokens, "scorer": scorer.name, "probe": probe_name,
        "overrides": train_changes(cmp), "calibration": json.dumps(info, default=str)[:4000],
        "wall time": f"{time.time() - t_start:.0f} s",
    }
    return generation_report(out, pd.concat(frames, ignore_index=True), cmp, meta)


def generation_report(out: Path, df: pd.DataFrame, run, meta: dict) -> dict[str, Path]:
    """Per-coefficient table, matched-fluency ranges (at `run`'s NLL and distinct-2 budget) and the report of
    the scored continuations `df` (every method/variant x seed, c = 0 rows included); prints the summary."""
    from innerpissa.eval.gen_metrics import coeff_summary, matched_range, method_summary

    tab = coeff_summary(df, n_boot=run.n_boot)
    ranges = matched_range(df, tab, run.nll_budget, run.distinct_frac, n_boot=run.n_boot)
    meta = {**meta, "fluency budget": f"NLL <= c0 + {run.nll_budget}, distinct-2 >= {run.distinct_frac:.0%} of c0"}
    paths = write_generation_report(out, df, tab, ranges, method_summary(ranges), meta)
    print(paths["summary"].read_text())
    return paths


def _fmt(x: float, nd: int = 3) -> str:
    return "-" if x != x else f"{x:+.{nd}f}"


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.0%}"


def headline_rows(summ: pd.DataFrame, ranges: pd.DataFrame) -> list[str]:
    """Markdown rows: range (sd over seeds), each side's shift with % valid, seeds with both CIs off 0."""
    lines = ["| method | range c+ − c− (sd over seeds) | Δ+ vs c=0 [valid] | Δ− vs c=0 [valid] | seeds both "
             "sides' CI excl. 0 | Spearman(c, score) | c+ / c− per seed |",
             "|---|---|---|---|---|---|---|"]
    for _, r in summ.iterrows():
        sd = "" if r["range_sd"] != r["range_sd"] else f" ({r['range_sd']:.3f})"
        lines.append(f"| {r['method']} | {r['range']:.3f}{sd} | {_fmt(r['d_plus'])} [{_pct(r['valid_plus'])}] | "
                     f"{_fmt(r['d_minus'])} [{_pct(r['valid_minus'])}] | {r['both_sides_excl0']}/{r['seeds']} | "
                     f"{r['spearman']:.2f} | {r['c_plus']} / {r['c_minus']} |")
    return lines


def write_generation_report(out: Path, df: pd.DataFrame, tab: pd.DataFrame, ranges: pd.DataFrame,
                            summ: pd.DataFrame, meta: dict) -> dict[str, Path]:
    """rows.csv (every continuation), coeffs.csv, ranges.csv, methods.csv, summary.md and sweep.png."""
    df.drop(columns=["ids"], errors="ignore").to_csv(out / "rows.csv", index=False)
    tab.to_csv(out / "coeffs.csv", index=False)
    ranges.to_csv(out / "ranges.csv", index=False)
    summ.to_csv(out / "methods.csv", index=False)
    lines = ["# Generation comparison", ""] + [f"- {k}: {v}" for k, v in meta.items()] + ["", "## Headline", ""]
    lines += headline_rows(summ, ranges)
    lines += ["", "## Per seed", "", "| method | seed | c+ | c− | score(c=0) | Δ+ [95% CI] | Δ− [95% CI] | range "
              "[95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for _, r in ranges.iterrows():
        lines.append(f"| {r['method']} | {r['seed']} | {r['c_plus']} | {r['c_minus']} | {r['score0']:.3f} | "
                     f"{_fmt(r['d_plus'])} [{_fmt(r['d_plus_lo'])}, {_fmt(r['d_plus_hi'])}] | "
                     f"{_fmt(r['d_minus'])} [{_fmt(r['d_minus_lo'])}, {_fmt(r['d_minus_hi'])}] | "
                     f"{_fmt(r['range'])} [{_fmt(r['range_lo'])}, {_fmt(r['range_hi'])}] |")
    lines += ["", "## Every coefficient (mean over seeds)", "", "| method | c | score | NLL | distinct-2 | rep-3 | "
              "valid |", "|---|---|---|---|---|---|---|"]
    agg = tab.groupby(["method", "c"], sort=True)[["score", "nll", "distinct2", "rep3", "valid"]].mean()
    for (m, c), r in agg.iterrows():
        lines.append(f"| {m} | {c:+g} | {r['score']:+.3f} | {r['nll']:.3f} | {r['distinct2']:.3f} | "
                     f"{r['rep3']:.3f} | {r['valid']:.0%} |")
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot = out / "sweep.png"
    _plot(agg.reset_index(), plot)
    return {"summary": summary, "plot": plot}


def _plot(agg: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for m, g in agg.groupby("method"):
        g = g.sort_values("c")
        for ax, col in zip(axes, ("score", "nll", "distinct2"), strict=True):
            ax.plot(g["c"], g[col], marker="o", label=m)
    for ax, title in zip(axes, ("concept score", "NLL under the base model", "distinct-2"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("c")
        ax.set_xscale("symlog", linthresh=1.0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
