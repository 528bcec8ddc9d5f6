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
    from innerpissa.data.dilemmas import load_dilemmas, sample_dilemmas, save_sample
    from innerpissa.eval.calibration import probe_fn
    from innerpissa.eval.choices import choice_ids
    from innerpissa.eval.harness import evaluate
    from innerpissa.eval.report import headline_table, markdown_table, write_report
    from innerpissa.eval.summary import coeff_table, method_table, seed_table
    from innerpissa.models import load_model
    from innerpissa.steering import NoSteering

    unknown = [m for m in cmp.methods if m not in ALL_METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    t_start = time.time()
    out = Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = train_config(cmp, cmp.seeds[0])
    model, tok = load_model(base_cfg.model, dtype=base_cfg.dtype, device=cmp.torch_device())
    data = load_dilemmas(cmp.data_dir)
    rows = sample_dilemmas(data, cmp.n_dilemmas, cmp.sample_seed, cmp.target, cmp.labelled_only, cmp.n_neutral)
    axes = [cmp.target] + [a for a in sorted({c.removeprefix("label:") for c in rows.columns if c.startswith("label:")})
                           if a != cmp.target and "/" in a and not a.startswith("Value/")]
    save_sample(rows, out / "sample.csv", cmp.sample_seed, axes)
    print(f"evaluating {rows['dilemma_idx'].nunique()} dilemmas ({len(rows)} rows); methods {list(cmp.methods)}; "
          f"seeds {list(cmp.seeds)}", flush=True)

    frames, trained_info = [], {}
    # c = 0 is the base model for every method (the adapter skips its delta, hooks add 0, the persona prompt
    # keeps the default system message): score it once and share it, instead of once per method and seed
    base = evaluate(model, tok, rows, NoSteering(), [0.0], batch_size=cmp.batch_size, min_mass=cmp.min_mass,
                    axes=axes, cache_dir=out / "cache", progress=False)
    for b in each_method(cmp, cmp.methods, model, tok, probe_fn(model, tok), cmp.adapter_coeffs, cmp.baseline_coeffs):
        if b.info:
            trained_info[f"{b.method}/seed{b.seed}"] = b.info
        res = evaluate(model, tok, rows, b.steerer, b.scored, seed=b.seed, batch_size=cmp.batch_size,
                       min_mass=cmp.min_mass, axes=axes, cache_dir=out / "cache", cache_tag=b.tag, progress=False)
        if b.shared_zero:
            res = pd.concat([base.assign(method=b.steerer.name, seed=b.seed), res], ignore_index=True)
        res["train_seconds"] = b.info.get("train_seconds", 0.0) or 0.0
        frames.append(res)

    res = pd.concat(frames, ignore_index=True)
    coeff_tab = coeff_table(res, cmp.target, axes[1:], n_boot=cmp.n_boot, seed=cmp.sample_seed)
    methods = method_table(res, coeff_tab, cmp.target, cmp.max_dnll, cmp.min_valid, n_boot=cmp.n_boot,
                           seed=cmp.sample_seed)
    info = {
        "model": base_cfg.model, "preset": cmp.preset, "pairs per seed": base_cfg.data.n_pairs, "seeds": list(cmp.seeds),
        "rows": f"{len(rows)} ({'labelled-only' if cmp.labelled_only else 'random'} sample, seed {cmp.sample_seed})",
        "coherence budget": f"ΔNLL <= {cmp.max_dnll}, valid >= {cmp.min_valid:.0%}",
        "choice tokens": choice_ids(tok).describe(tok), "overrides": train_changes(cmp),
        "calibration": json.dumps(trained_info, default=str)[:4000],
        "wall time": f"{time.time() - t_start:.0f} s",
    }
    paths = write_report(out, res, coeff_tab, methods, seed_table(methods), cmp.target, info,
                         max_dnll=cmp.max_dnll, min_valid=cmp.min_valid)
    print(markdown_table(headline_table(methods)))
    return paths

