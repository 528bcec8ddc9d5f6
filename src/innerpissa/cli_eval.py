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
    """Cache the scored sweep under OUT/cache (keyed by the model, the rows, the settings and the adapter's
    tensors), so a rerun with nothing changed does not score again."""
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


def check_out_path(out: Path, flag: str = "--out") -> None:
    """An output folder that is, or lies below, a regular file fails here, before any model work."""
    from innerpissa.fileio import first_file_on_path

    blocker = first_file_on_path(out)
    if blocker is not None:
        raise InputError(f"{flag} {out}: {blocker} is a file, not a folder; give a folder path")


def check_count(n: int, flag: str, minimum: int = 1) -> None:
    """A count option (tokens, prompts) must be an integer >= `minimum` (checked before any model loads)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise InputError(f"{flag} {n} is out of range; give an integer >= {minimum}")


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
    import pandas as pd

    from innerpissa.eval.generation import generate_sweep
    from innerpissa.eval.report import EXAMPLE_PROMPTS
    from innerpissa.eval.task import DilemmaTask
    from innerpissa.models import load_model
    from innerpissa.steering import AdapterSteerer, NoSteering

    t0 = time.perf_counter()
    check_coeffs(cfg.coeffs, "--coeffs")
    out = Path(cfg.out)
    check_out_path(out)
    rows, axes = cfg.draw_rows(cfg.seed, out, cfg.axes)  # bad data, numbers or axes fail before the model loads
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
    print(f"{rows['dilemma_idx'].nunique()} dilemmas ({len(rows)} rows) x {len(coeffs)} coefficients; "
          f"method {steerer.name}")

    task = DilemmaTask(model, tok, rows, axes, cfg, out / "cache" if cfg.cache else None, cfg.seed, progress=True)
    res = task.score(steerer, coeffs, seed=cfg.train_seed)
    examples = None
    if cfg.examples:
        ex_coeffs = [c for c in (-1.0, 0.0, 1.0) if c in coeffs] or [0.0]
        sweep = generate_sweep(model, tok, list(EXAMPLE_PROMPTS), steerer, ex_coeffs, max_new_tokens=48)
        examples = pd.DataFrame({"method": steerer.name, "coeff": sweep["c"],
                                 "prompt": [EXAMPLE_PROMPTS[i] for i in sweep["prompt_idx"]],
                                 "text": sweep["continuation"]})
    ident = task.describe()
    info = {
        "model": model_name, "adapter": cfg.adapter or "none (bare base model)", "method": steerer.name,
        "rows": ident["rows"], "validity": f"P(Yes)+P(No) >= {cfg.min_mass}",
        "choice tokens": ident["choice tokens"], "wall time": f"{time.perf_counter() - t0:.0f} s",
    }
    paths = task.report(out, [res], info, examples)
    print(f"\nsummary: {paths['summary']}\nplot: {paths['plot']}")
    return paths
