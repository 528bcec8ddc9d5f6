"""The DailyDilemmas evaluation, defined once: its settings (`eval`, `compare` and `ablate` each inherit
them, so their flags stay `--n-dilemmas`, `--batch-size`, ...; defaults from the harness and metrics) and
its pipeline: draw the rows, score steerers on them, write the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from innerpissa.data.dilemmas import (
    DEFAULT_TARGET,
    LABEL_PREFIX,
    framework_axes,
    load_dilemmas,
    sample_dilemmas,
    save_sample,
)
from innerpissa.errors import InputError
from innerpissa.eval.harness import DEFAULT_MIN_MASS, evaluate
from innerpissa.eval.metrics import DEFAULT_MAX_DNLL, DEFAULT_MIN_VALID
from innerpissa.eval.report import headline_table, markdown_table, write_report
from innerpissa.eval.summary import coeff_table, method_table, seed_table
from innerpissa.steering import Steerer


@dataclass
class EvalSettings:
    """Which DailyDilemmas rows are scored, how, and the budgets the report summarises at."""

    n_dilemmas: int | None = 256
    """Dilemmas to sample at random (each gives two rows); None for all 1360. With --labelled-only: how
    many target-labelled dilemmas (None = all of them)."""
    labelled_only: bool = False
    """Evaluate only dilemmas labelled on the target axis, plus --n-neutral label-0 ones for the bias term."""
    n_neutral: int = 128
    """Label-0 dilemmas added in --labelled-only mode (the bias-corrected score needs them)."""
    target: str = DEFAULT_TARGET
    """Target axis, e.g. 'Virtue/Truthfulness', 'MFT/Fairness' or 'Value/honesty'."""
    batch_size: int = 8
    """Rows per forward pass (left-padded)."""
    min_mass: float = DEFAULT_MIN_MASS
    """A row is valid when P(Yes) + P(No) reaches this."""
    max_dnll: float = DEFAULT_MAX_DNLL
    """Coherence budget on ΔNLL (nats per token) for the effect at matched coherence ..."""
    min_valid: float = DEFAULT_MIN_VALID
    """... and on the fraction of valid rows."""
    n_boot: int = 1000
    """Bootstrap resamples for the confidence intervals."""
    data_dir: Path | None = None
    """DailyDilemmas folder (default: $INNERPISSA_DILEMMAS_DIR, else ../shared/data/daily_dilemmas, else the hub)."""
    device: str | None = None
    """Device for the model, e.g. 'cuda' (default: cuda when available, else cpu)."""

    def torch_device(self) -> str:
        """`device`, or cuda when available, else cpu."""
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def draw_rows(self, seed: int, out: Path, axes: Sequence[str] = (),
                  data: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
        """The seeded sample of `data` (default: all DailyDilemmas), saved as OUT/sample.csv, and the axes
        reported: the target, then `axes` (default: every framework axis). Checked before any model loads."""
        for flag, v in (("--n-dilemmas", self.n_dilemmas), ("--batch-size", self.batch_size), ("--n-boot", self.n_boot)):
            if v is not None and v < 1:
                raise InputError(f"{flag} must be a positive number, got {v}" + (" (None for all dilemmas)"
                                                                               if flag == "--n-dilemmas" else ""))
        if self.labelled_only and self.n_neutral < 0:
            raise InputError(f"--n-neutral must be >= 0, got {self.n_neutral}")
        data = load_dilemmas(self.data_dir) if data is None else data
        axes = list(dict.fromkeys([self.target, *(axes or framework_axes(data))]))
        rows = sample_dilemmas(data, self.n_dilemmas, seed, self.target, self.labelled_only, self.n_neutral)
        unknown = [a for a in axes if LABEL_PREFIX + a not in data.columns]
        if unknown:
            raise InputError(f"--axes: unknown axis {unknown}; e.g. {framework_axes(data)[:5]}")
        save_sample(rows, Path(out) / "sample.csv", seed, axes)
        return rows, axes

    def score(self, model, tok, rows: pd.DataFrame, steerer: Steerer, coeffs: Sequence[float], axes: Sequence[str],
              out: Path | None, seed: int = 0, tag: str = "", progress: bool = False) -> pd.DataFrame:
        """`steerer` scored on `rows` at `coeffs` (cached under OUT/cache by `tag`; out None: no cache)."""
        return evaluate(model, tok, rows, steerer, list(coeffs), seed=seed, batch_size=self.batch_size,
                        min_mass=self.min_mass, axes=axes, cache_dir=None if out is None else Path(out) / "cache",
                        cache_tag=tag, progress=progress)

    def report(self, out: Path, res: pd.DataFrame, axes: Sequence[str], seed: int, info: Mapping[str, object],
               examples: pd.DataFrame | None = None) -> dict[str, Path]:
        """Tables (per coefficient, per method at matched coherence, over seeds) and the report in OUT;
        prints the headline. `seed` seeds the bootstrap; `info` lines head the summary."""
        coeff_tab = coeff_table(res, self.target, axes, n_boot=self.n_boot, seed=seed)
        methods = method_table(res, coeff_tab, self.target, self.max_dnll, self.min_valid, n_boot=self.n_boot,
                               seed=seed)
        info = {**info, "coherence budget": f"ΔNLL <= {self.max_dnll}, valid >= {self.min_valid:.0%}"}
        paths = write_report(out, res, coeff_tab, methods, seed_table(methods), self.target, info, examples,
                             self.max_dnll, self.min_valid)
        paths["sample"] = Path(out) / "sample.csv"
        print(markdown_table(headline_table(methods)))
        return paths

    def rows_info(self, rows: pd.DataFrame, seed: int) -> str:
        """How the rows were drawn, for the report."""
        return f"{len(rows)} ({'labelled-only' if self.labelled_only else 'random'} sample, seed {seed})"


@dataclass
class SweepSettings(EvalSettings):
    """The settings of the multi-run commands (`compare`, `ablate`): fewer dilemmas, bigger batches."""

    n_dilemmas: int | None = 128
    """Random dilemmas to evaluate (both rows of each); with --labelled-only, labelled dilemmas."""
    batch_size: int = 16
    """Evaluation batch size."""
