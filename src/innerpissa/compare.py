"""`innerpissa compare`: every method on the same pairs, the same evaluation items and the same probe, over seeds.

For each seed the training pairs are `make_pairs(data, seed)` (identical for every method). Trained methods
(InnerPiSSA and the LoRA-scaled-by-c baseline) go through the same trainer and sign calibration; the
baselines are fitted on the same pairs and calibrated on the same probe. The evaluation is a `Task`
(`eval/task.py`): DailyDilemmas rows (`--task dilemmas`, a seeded sample saved beside the results) or greedy
continuations of held-out prompts scored by a concept scorer (`--task generation`, `--gen.*`). c = 0 is the
base model for every method and is scored once; each (method, seed) sweep is cached under the steerer's
fingerprint and each trained method is kept (retrained when its settings change), so an interrupted
comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from innerpissa.eval.settings import CompareGen
from innerpissa.methods import (
    ALL_METHODS,
    DEFAULT_METHODS,
    Runs,
    each_method,
    open_task,
    run_concept,
    score_with_base,
    train_changes,
    train_config,
)

GEN_METHODS = ("innerpissa", "lora", "prompting", "pca", "mean_diff", "random")
#: generation: vector sweeps in mean-difference units, fine near 0 (sentiment moves at |c| ~ 0.5 on SmolLM2)
#: and wide enough to lose fluency; the random control goes further, as it needs more push to do anything
GEN_VECTOR_COEFFS = {
    "mean_diff": (-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "pca": (-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "random": (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0),
}
#: per task: the default methods (when --methods is left at its default) and those it can run
TASK_METHODS = {"dilemmas": (DEFAULT_METHODS, ALL_METHODS),
                "generation": (GEN_METHODS, (*GEN_METHODS, "sspace", "steering_vectors"))}


@dataclass
class Compare(Runs):
    """Train InnerPiSSA and the baselines on the same pairs; evaluate all on the same items."""

    out: Path = Path("runs/compare")
    """Output folder: train/, cache/, sample.csv and the report (summary.md, plot, CSVs)."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Methods to compare: innerpissa, lora, prompting, pca, mean_diff, random, sspace, and the optional
    sft (supervised LoRA on the model's own persona-conditioned answers: an upper reference that needs
    generation, so it is not in the default list) and steering_vectors (the external package). The
    generation task's default leaves out sspace."""
    adapter_coeffs: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """Dilemmas: coefficient sweep of InnerPiSSA and LoRA (generation: --gen.adapter-coeffs)."""
    baseline_coeffs: tuple[float, ...] | None = None
    """Sweep for vector and S-space baselines (None: each baseline's own, wide enough to break coherence)."""
    gen: CompareGen = field(default_factory=CompareGen)
    """Generation task settings."""

    def run(self) -> None:
        paths = run_compare(self)
        print(f"\nsummary: {paths['summary']}\nplot: {paths['plot']}")


def compared_methods(cmp: Compare) -> tuple[str, ...]:
    """The methods to run on `cmp.task`: the task's default when --methods was left alone; unknown ones raise."""
    default, allowed = TASK_METHODS[cmp.task]
    methods = default if tuple(cmp.methods) == DEFAULT_METHODS else tuple(cmp.methods)
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown} for --task {cmp.task}; choose from {', '.join(allowed)}")
    if cmp.task == "dilemmas" and cmp.concept not in (None, "honesty"):
        raise ValueError(f"--task dilemmas measures honesty only, got --concept {cmp.concept}; "
                         "use --task generation for other concepts")
    return methods


def run_compare(cmp: Compare) -> dict[str, Path]:
    """Every method x seed scored on one task: `task.base()`, then `task.score` per method, then the report."""
    from innerpissa.eval.calibration import concept_probe

    methods = compared_methods(cmp)
    generation = cmp.task == "generation"
    t_start, out = time.time(), Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    task = open_task(cmp, out, cmp.gen.split or "test")
    concept = run_concept(cmp) or "honesty"
    probe_name, probe = concept_probe(task.model, task.tok, concept)
    print(f"{cmp.task} comparison of {list(methods)} over seeds {list(cmp.seeds)}", flush=True)

    # c = 0 is the base model for every method (the adapter skips its delta, hooks add 0, the persona prompt
    # keeps the default system message): scored once, shared
    base, frames, trained_info = task.base(), [], {}
    for b in each_method(cmp, methods, task.model, task.tok, probe,
                         cmp.gen.adapter_coeffs if generation else cmp.adapter_coeffs, cmp.baseline_coeffs,
                         GEN_VECTOR_COEFFS if generation else None):
        if b.info:
            trained_info[f"{b.method}/seed{b.seed}"] = b.info
        frames.append(score_with_base(task, base, b.steerer, b.coeffs, b.seed, b.info.get("train_seconds") or 0.0))

    cfg = train_config(cmp, cmp.seeds[0])
    meta = {"model": cfg.model, "preset": cmp.preset, **({"concept": concept} if generation else {}),
            "pairs per seed": cfg.data.n_pairs, "seeds": list(cmp.seeds), **task.describe(),
            **({"probe": probe_name} if generation else {}),
            "overrides": train_changes(cmp), "calibration": json.dumps(trained_info, default=str)[:4000],
            "wall time": f"{time.time() - t_start:.0f} s"}
    return task.report(out, frames, meta)
