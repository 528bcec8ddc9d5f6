"""The evaluations' settings, defined once: DailyDilemmas' (`eval`, `compare` and `ablate` inherit them, so
their flags stay `--n-dilemmas`, `--batch-size`, ...; defaults from the harness and metrics) and the
rows they draw, and the generation task's nested group (`--gen.*`, `GenSettings`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


@dataclass
class GenSettings:
    """The generation task (`--task generation`): greedy continuations of held-out prompts, scored by a
    concept scorer, with fluency under the unsteered model."""

    split: Literal["dev", "test", "all"] | None = None
    """Which held-out neutral prompts: dev (choosing settings), test (reporting) or all (None: test for
    compare; for ablate the half --split names, select: dev)."""
    prompts_file: Path | None = None
    """Your own prompts instead of the built-in ones: a text file (one prompt per line) or a JSON list."""
    n_prompts: int | None = None
    """The first n prompts (None: all)."""
    scorer: str = "builtin"
    """What scores a continuation: `builtin` (the concept's scorer, VADER for sentiment), a registered name
    (`vader`) or `module:function`, a function of one text returning a float (higher = more of the concept)."""
    max_new_tokens: int = 40
    """Greedy tokens per continuation."""
    batch: int = 128
    """Rows per batched decode (bounds the KV-cache memory)."""
    nll_budget: float = 0.25
    """A side is usable while its mean continuation NLL is at most c = 0's plus this ..."""
    distinct_frac: float = 0.9
    """... and its mean distinct-2 at least this fraction of c = 0's."""

    def check(self) -> None:
        """Numbers and files, checked before any model loads."""
        for flag, v in (("--gen.n-prompts", self.n_prompts), ("--gen.max-new-tokens", self.max_new_tokens),
                        ("--gen.batch", self.batch)):
            if v is not None and v < 1:
                raise InputError(f"{flag} must be a positive number, got {v}")
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            raise InputError(f"--gen.prompts-file: {self.prompts_file} is not a file")


@dataclass
class CompareGen(GenSettings):
    """`compare`'s generation settings: the shared ones and the adapters' sweep."""

    adapter_coeffs: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
    """Coefficient sweep of InnerPiSSA and LoRA."""
