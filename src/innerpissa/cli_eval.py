"""`innerpissa eval`: score an adapter (or the bare base model) on DailyDilemmas and write the report.

    innerpissa eval --adapter runs/honesty/adapter --coeffs -1 -0.5 0 0.5 1 --n-dilemmas 256
    innerpissa eval                     # the bare base model at c = 0
    innerpissa eval --adapter A --labelled-only --n-neutral 128   # all ~522 truthfulness dilemmas
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from innerpissa.errors import InputError
from innerpissa.eval.settings import EvalSettings


@dataclass
class EvalConfig(EvalSettings):
    """Evaluate steering on DailyDilemmas (METHOD section 7) and write rows, tables, plot and examples."""

    adapter: Path | None = None
    """Adapter folder to evaluate; None evaluates the bare base model (at c = 0 only)."""
    model: str | None = None
    """Base model: HF id, local folder, 'smollm2' (embedded) or 'tiny-random' (default: the one the adapter
    records, else smollm2)."""
    coeffs: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    """Steering coefficients to sweep (0 is always added: every Δ is measured against it)."""
    axes: tuple[str, ...] = ()
    """Axes kept in the per-row output and used for side effects; empty = every framework category."""
    seed: int = 0
    """Seed of the dilemma sample and the bootstrap."""
    train_seed: int = 0
    """Training seed of the adapter, recorded in the results (aggregate over seeds with `compare`)."""
    method: str | None = None
    """Name of the method in tables and plots (default: 'innerpissa', or 'base' without an adapter)."""
    out: Path = Path("out/eval")
    """Output folder: rows.csv, coeffs.csv, methods.csv, summary.md, dose_response.png, examples.md, sample.csv."""
    cache: bool = True
    """Cache scores per (method, seed, coeff) under OUT/cache so a killed run resumes."""
    examples: bool = True
    """Also write greedy answers to a few fixed prompts at c = -1, 0, 1."""
    dtype: str = "float32"
    """Model dtype (float32, bfloat16, float16)."""

    def run(self) -> None:
        eval_main(self)


def check_coeffs(coeffs, flag: str) -> None:
    """Coefficients must be finite numbers (checked before any model is loaded)."""
    import math

    bad = [c for c in coeffs if not math.isfinite(c)]
    if bad:
        raise InputError(f"{flag}: coefficients must be finite numbers, got {bad}")


def adapter_base_model(adapter: Path | None, model: str | None) -> str:
    """The base model to load: `--model` if given, else the one the adapter records, else 'smollm2'."""
    if model is not None:
        return model
    if adapter is None:
        return "smollm2"
    from innerpissa.adapter import read_adapter_meta

    return (read_adapter_meta(adapter).get("base_model") or {}).get("name_or_path") or "smollm2"


def eval_main(cfg: EvalConfig) -> dict[str, Path]:
    """Run the evaluation described by `cfg`; prints the headline table and returns the report paths."""
    from innerpissa.data.dilemmas import (
        LABEL_PREFIX,
        framework_axes,
        load_dilemmas,
        sample_dilemmas,
        save_sample,
    )
    from innerpissa.eval.choices import choice_ids
    from innerpissa.eval.harness import adapter_fingerprint, continuations, evaluate
    from innerpissa.eval.report import EXAMPLE_PROMPTS, headline_table, markdown_table, write_report
    from innerpissa.eval.summary import coeff_table, method_table, seed_table
    from innerpissa.models import load_model
    from innerpissa.steering import AdapterSteerer, NoSteering

    t0 = time.perf_counter()
    check_coeffs(cfg.coeffs, "--coeffs")
    for flag, v in (("--n-dilemmas", cfg.n_dilemmas), ("--batch-size", cfg.batch_size), ("--n-boot", cfg.n_boot)):
        if v is not None and v < 1:
            raise InputError(f"{flag} must be a positive number, got {v}" + (" (None for all dilemmas)"
                                                                           if flag == "--n-dilemmas" else ""))
    if cfg.labelled_only and cfg.n_neutral < 0:
        raise InputError(f"--n-neutral must be >= 0, got {cfg.n_neutral}")
    data = load_dilemmas(cfg.data_dir)  # bad data or a bad axis fail before the model loads
    axes = list(dict.fromkeys([cfg.target, *(cfg.axes or framework_axes(data))]))
    rows = sample_dilemmas(data, cfg.n_dilemmas, cfg.seed, cfg.target, cfg.labelled_only, cfg.n_neutral)
    unknown = [a for a in axes if LABEL_PREFIX + a not in data.columns]
    if unknown:
        raise InputError(f"--axes: unknown axis {unknown}; e.g. {framework_axes(data)[:5]}")
    model_name = adapter_base_model(cfg.adapter, cfg.model)
    model, tok = load_model(model_name, dtype=cfg.dtype, device=cfg.torch_device())
    if cfg.adapter is not None:
        from innerpissa.adapter import load_adapter

        model = load_adapter(model, cfg.adapter)
        steerer = AdapterSteerer(model, name=cfg.method or "innerpissa")
        coeffs = sorted(set(cfg.coeffs) | {0.0})
    else:
        steerer = NoSteering()
        steerer.name = cfg.method or "base"
        coeffs = [0.0]

    out = Path(cfg.out)
    save_sample(rows, out / "sample.csv", cfg.seed, axes)
    print(f"{rows['dilemma_idx'].nunique()} dilemmas ({len(rows)} rows) x {len(coeffs)} coefficients; "
          f"method {steerer.name}")

    res = evaluate(model, tok, rows, steerer, coeffs, seed=cfg.train_seed, batch_size=cfg.batch_size,
                   min_mass=cfg.min_mass, axes=axes, cache_dir=out / "cache" if cfg.cache else None,
                   cache_tag=adapter_fingerprint(cfg.adapter) if cfg.adapter is not None else "")
    coeff_tab = coeff_table(res, cfg.target, axes, n_boot=cfg.n_boot, seed=cfg.seed)
    methods = method_table(res, coeff_tab, cfg.target, cfg.max_dnll, cfg.min_valid, n_boot=cfg.n_boot, seed=cfg.seed)
    examples = None
    if cfg.examples:
        ex_coeffs = [c for c in (-1.0, 0.0, 1.0) if c in coeffs] or [0.0]
        examples = continuations(model, tok, steerer, EXAMPLE_PROMPTS, ex_coeffs)
    info = {
        "model": model_name, "adapter": cfg.adapter or "none (bare base model)", "method": steerer.name,
        "rows": f"{len(rows)} ({'labelled-only' if cfg.labelled_only else 'random'} sample, seed {cfg.seed})",
        "validity": f"P(Yes)+P(No) >= {cfg.min_mass}", "coherence budget": f"ΔNLL <= {cfg.max_dnll}, valid >= {cfg.min_valid:.0%}",
        "choice tokens": choice_ids(tok).describe(tok),
        "wall time": f"{time.perf_counter() - t0:.0f} s",
    }
    paths = write_report(out, res, coeff_tab, methods, seed_table(methods), cfg.target, info, examples,
                         cfg.max_dnll, cfg.min_valid)
    paths["sample"] = out / "sample.csv"
    print(markdown_table(headline_table(methods)))
    print(f"\nsummary: {paths['summary']}\nplot: {paths['plot']}")
    return paths
