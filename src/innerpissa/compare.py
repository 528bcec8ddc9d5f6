"""`innerpissa compare`: every method on the same pairs, the same evaluation items and the same probe, over seeds.

For each seed the training pairs are `make_pairs(data, seed)` (identical for every method). Trained methods
(InnerPiSSA and the LoRA-scaled-by-c baseline) go through the same trainer and sign calibration; the
baselines are fitted on the same pairs and calibrated on the same probe. The evaluation is a `Task`
(`eval/task.py`): DailyDilemmas rows (`--task dilemmas`, a seeded sample saved beside the results) or greedy
continuations of held-out prompts scored by a concept scorer (`--task generation`, `--gen.*`). c = 0 is the
base model for every method and is scored once; each (method, seed) sweep is cached under the steerer's
fingerprint and each trained method is kept (retrained when its settings change), so an interrupted
comparison resumes where it stopped.

The generation task's default protocol (`--gen.select dev-test`, `eval/matching.py`) is a fair match: per
method and seed, a dev-prompt sweep from the method's starting grid, extended until each side leaves the
largest fluency budget; each side's strength chosen at every budget (`--gen.budgets`) by interpolating the dev
NLL to the budget; the test prompts scored at exactly those strengths. Trained kinds take named variants as
rows of their own (`--methods innerpissa innerpissa:shift lora:shift`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from innerpissa.errors import InputError
from innerpissa.eval.settings import FINE_GRID, CompareGen
from innerpissa.methods import (
    ALL_METHODS,
    DEFAULT_METHODS,
    Runs,
    each_method,
    open_task,
    parse_method,
    run_concept,
    score_with_base,
    train_changes,
    train_config,
    trained_kinds,
)

GEN_METHODS = ("innerpissa", "lora", "prompting", "instruction", "pca", "mean_diff", "random")
#: generation, --gen.select same-split (the old rule): vector sweeps in mean-difference units, fine near 0
#: (sentiment moves at |c| ~ 0.5 on SmolLM2) and wide enough to lose fluency; the random control goes further
GEN_VECTOR_COEFFS = {
    "mean_diff": (-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "pca": (-4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    "random": (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0),
}
VECTORS = tuple(GEN_VECTOR_COEFFS)
#: per task: the default methods (when --methods is left at its default) and the baselines it can run (every
#: trained kind, alone or as `kind:variant`, runs on both)
TASK_METHODS = {"dilemmas": (DEFAULT_METHODS, ALL_METHODS),
                "generation": (GEN_METHODS, (*GEN_METHODS, "sspace", "steering_vectors"))}


@dataclass
class Compare(Runs):
    """Train InnerPiSSA and the baselines on the same pairs; evaluate all on the same items."""

    out: Path = Path("runs/compare")
    """Output folder: train/, cache/, sample.csv and the report (summary.md, plot, CSVs)."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Methods to compare: innerpissa, lora, prompting, instruction, pca, mean_diff, random, sspace, and the
    optional sft (supervised LoRA on the model's own persona-conditioned answers: an upper reference that needs
    generation, so it is not in the default list) and steering_vectors (the external package). A trained kind
    with a named training variant is a row of its own: `innerpissa:NAME`, `lora:NAME` (NAME from
    innerpissa.train.variants), trained in OUT/train/<kind>-<NAME>_seed<s>. The generation task's default is
    innerpissa, lora, prompting, instruction, pca, mean_diff, random."""
    adapter_coeffs: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """Dilemmas: coefficient sweep of InnerPiSSA and LoRA (generation: --gen.adapter-coeffs)."""
    baseline_coeffs: tuple[float, ...] | None = None
    """Sweep for vector and S-space baselines (None: each baseline's own, wide enough to break coherence;
    generation: --gen.vector-coeffs)."""
    gen: CompareGen = field(default_factory=CompareGen)
    """Generation task settings."""

    def run(self) -> None:
        paths = run_compare(self)
        print(f"\nsummary: {paths['summary']}\nplot: {paths['plot']}")


def compared_methods(cmp: Compare) -> tuple[str, ...]:
    """The methods to run on `cmp.task`: the task's default when --methods was left alone; unknown ones raise,
    and so does a `kind:variant` whose kind is not trained or whose variant does not exist."""
    default, allowed = TASK_METHODS[cmp.task]
    methods = default if tuple(cmp.methods) == DEFAULT_METHODS else tuple(cmp.methods)
    unknown = []
    for m in methods:
        try:
            kind, _ = parse_method(m)
        except InputError as e:
            raise SystemExit(str(e)) from None
        if kind not in allowed and kind not in trained_kinds():
            unknown.append(m)
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown} for --task {cmp.task}; choose from "
                         f"{', '.join(dict.fromkeys((*trained_kinds(), *allowed)))}, or KIND:VARIANT for a trained "
                         "kind with a named variant (innerpissa.train.variants)")
    if len(set(methods)) != len(methods):
        raise SystemExit(f"--methods lists a method twice: {list(methods)}")
    if cmp.task == "dilemmas" and cmp.concept not in (None, "honesty"):
        raise ValueError(f"--task dilemmas measures honesty only, got --concept {cmp.concept}; "
                         "use --task generation for other concepts")
    return methods


def generation_grids(cmp: Compare) -> tuple[tuple[float, ...], dict[str, tuple[float, ...]]]:
    """The starting grids of the generation task: the trained methods' (in c) and each vector's (in mean-
    difference units), per --gen.select (module constants and CompareGen's docs say which)."""
    g = cmp.gen
    if g.vector_coeffs is not None:
        vectors = {m: tuple(g.vector_coeffs) for m in VECTORS}
    elif g.select == "dev-test":
        vectors = {m: FINE_GRID for m in VECTORS}
    else:
        vectors = dict(GEN_VECTOR_COEFFS)
    return g.adapter_grid(), vectors


def run_compare(cmp: Compare) -> dict[str, Path]:
    """Every method x seed scored on one task: `task.base()`, then `task.score` per method, then the report.
    The generation task's default (`--gen.select dev-test`) chooses each method's strengths on the dev prompts
    and scores the test prompts at them (`eval/matching.py`)."""
    from innerpissa.eval.calibration import concept_probe
    from innerpissa.eval.matching import Matcher

    methods = compared_methods(cmp)
    generation = cmp.task == "generation"
    matched = generation and cmp.gen.select == "dev-test"
    if generation:
        cmp.gen.check()
    if matched:
        if cmp.gen.split not in (None, "test"):
            raise InputError(f"--gen.select dev-test chooses on the dev prompts and reports on test, got --gen.split "
                             f"{cmp.gen.split}; use --gen.select same-split to report on another split")
        if cmp.gen.prompts_file is not None and cmp.gen.dev_prompts_file is None:
            raise InputError("--gen.prompts-file: the dev-test protocol also needs --gen.dev-prompts-file (other "
                             "prompts, to choose strengths on), or use --gen.select same-split")
        cmp.gen.check()
    t_start, out = time.time(), Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    task = open_task(cmp, out, cmp.gen.split or "test")
    concept = run_concept(cmp) or "honesty"
    probe_name, probe = concept_probe(task.model, task.tok, concept)
    print(f"{cmp.task} comparison of {list(methods)} over seeds {list(cmp.seeds)}", flush=True)

    adapter_grid, vector_grids = generation_grids(cmp) if generation else (cmp.adapter_coeffs, None)
    matcher = None
    if matched:
        dev_task = task.on_prompts("dev", cmp.gen.dev_prompts_file)
        matcher = Matcher(dev_task, task, cmp.gen.budgets, cmp.gen.distinct_frac, cmp.gen.min_valid, cmp.gen.extend,
                          cmp.gen.refine)
    # c = 0 is the base model for every method (the adapter skips its delta, hooks add 0, the persona prompt
    # keeps the default system message): scored once, shared
    base, frames, trained_info = (matcher.test_base if matcher else task.base()), [], {}
    for b in each_method(cmp, methods, task.model, task.tok, probe, adapter_grid, cmp.baseline_coeffs, vector_grids):
        if b.info:
            trained_info[f"{b.method}/seed{b.seed}"] = b.info
        seconds = b.info.get("train_seconds") or 0.0
        if matcher is not None:
            matcher.run(b.steerer, b.coeffs, b.seed, seconds)
        else:
            coeffs = b.coeffs if 0.0 in b.coeffs else [0.0, *b.coeffs]
            frames.append(score_with_base(task, base, b.steerer, coeffs, b.seed, seconds))

    cfg = train_config(cmp, cmp.seeds[0])
    meta = {"model": cfg.model, "preset": cmp.preset, **({"concept": concept} if generation else {}),
            "pairs per seed": cfg.data.n_pairs, "seeds": list(cmp.seeds), **task.describe(),
            **({"probe": probe_name} if generation else {}),
            "overrides": train_changes(cmp), "calibration": json.dumps(trained_info, default=str)[:4000],
            "wall time": f"{time.time() - t_start:.0f} s"}
    if matcher is not None:
        return task.report_matched(out, matcher, meta, chosen_on=matcher.dev.source)
    return task.report(out, frames, meta)
