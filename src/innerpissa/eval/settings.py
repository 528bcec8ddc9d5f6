"""The DailyDilemmas evaluation settings, defined once: `eval`, `compare` and `ablate` each inherit them
(so their flags stay `--n-dilemmas`, `--batch-size`, ...), with defaults from the harness and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from innerpissa.data.dilemmas import DEFAULT_TARGET
from innerpissa.eval.harness import DEFAULT_MIN_MASS
from innerpissa.eval.metrics import DEFAULT_MAX_DNLL, DEFAULT_MIN_VALID


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


@dataclass
class SweepSettings(EvalSettings):
    """The settings of the multi-run commands (`compare`, `ablate`): fewer dilemmas, bigger batches."""

    n_dilemmas: int | None = 128
    """Random dilemmas to evaluate (both rows of each); with --labelled-only, labelled dilemmas."""
    batch_size: int = 16
    """Evaluation batch size."""
