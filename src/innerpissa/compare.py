"""`innerpissa compare`: every method on the same pairs, the same rows and the same probe, over seeds.

For each seed the training pairs are `make_pairs(seed)` (identical for every method); the evaluation rows
are one seeded random sample of DailyDilemmas, saved beside the results. Trained methods (InnerPiSSA and the
LoRA-scaled-by-c baseline) go through the same trainer and the same sign calibration; steering-vector
baselines are fitted on the same pairs and calibrated on the same probe. Each (method, seed, coefficient)
is scored once and cached on disk, and each trained method is kept, so an interrupted comparison resumes
where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from innerpissa.methods import ALL_METHODS, DEFAULT_METHODS, Runs, each_method, train_changes, train_config


@dataclass
class Compare(Runs):
    """Train InnerPiSSA and the baselines on the same pairs; evaluate all on the same DailyDilemmas rows."""

    out: Path = Path("runs/compare")
    """Output folder: train/, cache/, sample.csv and the report (summary.md, dose_response.png, CSVs)."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Methods to compare: innerpissa, lora, prompting, pca, mean_diff, random, sspace, and the optional
    sft (supervised LoRA on the model's own persona-conditioned answers: an upper reference that needs
    generation, so it is not in the default list) and steering_vectors (the external package)."""
    adapter_coeffs: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """Coefficient sweep of InnerPiSSA and LoRA."""
    baseline_coeffs: tuple[float, ...] | None = None
    """Sweep for vector and S-space baselines (None: each baseline's own, wide enough to break coherence)."""
    prompt_split: Literal["dev", "test", "all"] = "test"
    """Generation task: which held-out neutral prompts (dev for choosing settings, test for reporting)."""
    gen_adapter_coeffs: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
    """Generation task: coefficient sweep of InnerPiSSA and LoRA."""
    gen_batch: int = 128
    """Generation task: rows per batched generate call (bounds the KV-cache memory)."""

    def run(self) -> None:
        paths = run_compare(self)
        print(f"\nsummary: {paths['summary']}\nplot: {paths['plot']}")


def run_compare(cmp: Compare) -> dict[str, Path]:
    if cmp.task == "generation":
        from innerpissa.compare_generation import run_generation_compare

        return run_generation_compare(cmp)
    if cmp.concept not in (None, "honesty"):
        raise ValueError(f"--task dilemmas measures honesty only, got --concept {cmp.concept}; "
                         "use --task generation for other concepts")
    from innerpissa.eval.calibration import concept_probe
    from innerpissa.eval.choices import choice_ids
    from innerpissa.models import load_model
    from innerpissa.steering import NoSteering

    unknown = [m for m in cmp.methods if m not in ALL_METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    t_start = time.time()
    out = Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, axes = cmp.draw_rows(cmp.sample_seed, out)
    base_cfg = train_config(cmp, cmp.seeds[0])
    model, tok = load_model(base_cfg.model, dtype=base_cfg.dtype, device=cmp.torch_device())
    print(f"evaluating {rows['dilemma_idx'].nunique()} dilemmas ({len(rows)} rows); methods {list(cmp.methods)}; "
          f"seeds {list(cmp.seeds)}", flush=True)

    frames, trained_info = [], {}
    # c = 0 is the base model for every method (the adapter skips its delta, hooks add 0, the persona prompt
    # keeps the default system message): score it once and share it, instead of once per method and seed
    base = cmp.score(model, tok, rows, NoSteering(), [0.0], axes, out)
    for b in each_method(cmp, cmp.methods, model, tok, concept_probe(model, tok, "honesty")[1], cmp.adapter_coeffs, cmp.baseline_coeffs):
        if b.info:
            trained_info[f"{b.method}/seed{b.seed}"] = b.info
        res = cmp.score(model, tok, rows, b.steerer, b.scored, axes, out, seed=b.seed, tag=b.tag)
        if b.shared_zero:
            res = pd.concat([base.assign(method=b.steerer.name, seed=b.seed), res], ignore_index=True)
        res["train_seconds"] = b.info.get("train_seconds", 0.0) or 0.0
        frames.append(res)

    info = {
        "model": base_cfg.model, "preset": cmp.preset, "pairs per seed": base_cfg.data.n_pairs, "seeds": list(cmp.seeds),
        "rows": cmp.rows_info(rows, cmp.sample_seed), "choice tokens": choice_ids(tok).describe(tok),
        "overrides": train_changes(cmp), "calibration": json.dumps(trained_info, default=str)[:4000],
        "wall time": f"{time.time() - t_start:.0f} s",
    }
    return cmp.report(out, pd.concat(frames, ignore_index=True), axes, cmp.sample_seed, info)
