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
from innerpissa.eval.gen_metrics import DEFAULT_MAX_REP3
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
    compare, whose strengths are chosen on dev; for ablate the half --split names, select: dev)."""
    prompts_file: Path | None = None
    """Your own prompts instead of the built-in ones: a text file (one prompt per line) or a JSON list."""
    dev_prompts_file: Path | None = None
    """With --gen.prompts-file: your own prompts to choose each method's strength on (compare's dev-test
    protocol never chooses on the prompts it reports)."""
    n_prompts: int | None = None
    """The first n prompts of each split or file (None: all)."""
    scorer: str = "builtin"
    """What scores a continuation: `builtin` (the concept's scorer, VADER for sentiment), a registered name
    (`vader`, `textblob`) or `module:function`, a function of one text returning a float (higher = more of the
    concept)."""
    scorers: tuple[str, ...] | None = None
    """Every scorer the report gives, the first being the headline, e.g. `vader textblob` (None: the concept's
    built-in ones when --gen.scorer is builtin, sentiment: vader and textblob; else --gen.scorer alone).
    Strengths are chosen on fluency only, so every scorer is read at the same c."""
    max_new_tokens: int = 40
    """Greedy tokens per continuation."""
    batch: int = 128
    """Rows per batched decode (bounds the KV-cache memory)."""
    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    """Fluency budgets in nats: a side stays in budget b while its mean continuation NLL is at most c = 0's
    plus b; each method's strength per side is chosen at every budget (the headline is 0.25)."""
    distinct_frac: float = 0.9
    """... and while its mean distinct-2 is at least this fraction of c = 0's ..."""
    min_valid: float = 0.9
    """... and at least this fraction of its continuations is valid (c = 0's own fraction, if lower)."""
    max_rep3: float = DEFAULT_MAX_REP3
    """Repetition gate: a continuation whose repeated-3-gram fraction exceeds this is invalid (left out of
    score means and counted). 0.2: 33 of SmolLM2's 35 unsteered dev continuations are at most 0.08 (the other
    two loop: 0.37, 0.48), a mean-difference vector pushed to -2 / +4 puts 26 / 30 of 35 above it, and texts
    above it repeat a whole clause verbatim (docs/RESULTS.md, bench/rep3_gate.py)."""
    extend: int = 5
    """The dev sweep adds 1.5x and 2x a side's largest |c| while that side has not left the largest budget, up to
    2**extend times the starting grid's largest |c|."""
    refine: int = 2
    """The dev sweep halves a side's smallest |c| while that point already leaves the smallest budget, at most
    this many times."""
    nll_budget: float = 0.25
    """The old rule's budget (compare --gen.select same-split): the largest grid |c| with mean NLL at most
    c = 0's plus this (and distinct-2 as above), on the prompts it reports."""

    def check(self) -> None:
        """Numbers and files, checked before any model loads."""
        for flag, v in (("--gen.n-prompts", self.n_prompts), ("--gen.max-new-tokens", self.max_new_tokens),
                        ("--gen.batch", self.batch)):
            if v is not None and v < 1:
                raise InputError(f"{flag} must be a positive number, got {v}")
        for flag, f in (("--gen.prompts-file", self.prompts_file), ("--gen.dev-prompts-file", self.dev_prompts_file)):
            if f is not None and not Path(f).is_file():
                raise InputError(f"{flag}: {f} is not a file")
        if not self.budgets or any(not b > 0 for b in self.budgets):
            raise InputError(f"--gen.budgets must be positive nats, got {list(self.budgets)}")
        for flag, v in (("--gen.distinct-frac", self.distinct_frac), ("--gen.min-valid", self.min_valid),
                        ("--gen.max-rep3", self.max_rep3)):
            if not 0 <= v <= 1:
                raise InputError(f"{flag} must be a fraction in [0, 1], got {v}")
        for flag, v in (("--gen.extend", self.extend), ("--gen.refine", self.refine)):
            if not 0 <= v <= 10:
                raise InputError(f"{flag} must be between 0 and 10, got {v}")


#: the starting grids of the dev-test protocol (each method's own units; extended automatically): fine near 0,
#: where an output-trained adapter already leaves the budget (METHOD section 12), up to 2
FINE_GRID = (-2.0, -1.5, -1.0, -0.75, -0.5, -0.25, -0.125, 0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
#: the old rule's adapter sweep (--gen.select same-split)
SAME_SPLIT_ADAPTER_COEFFS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


@dataclass
class CompareGen(GenSettings):
    """`compare`'s generation settings: the shared ones, how strengths are chosen, and the starting grids."""

    select: Literal["dev-test", "same-split"] = "dev-test"
    """`dev-test`: each method's strength per side chosen on the dev prompts at every --gen.budgets (grid
    extended until each side leaves the largest budget, c* interpolated to the budget), reported on test.
    `same-split` (the old rule, kept for comparison with earlier runs): the largest grid |c| within
    --gen.nll-budget on the prompts it reports."""
    adapter_coeffs: tuple[float, ...] | None = None
    """Starting grid of the trained methods (InnerPiSSA, LoRA(c) and their `method:variant` rows), in c. None:
    the fine grid ±(0.125, 0.25, 0.5, 0.75, 1, 1.5, 2) for dev-test, (-2, -1, -0.5, 0, 0.5, 1, 2) for same-split."""
    vector_coeffs: tuple[float, ...] | None = None
    """Starting grid of the steering vectors (mean_diff, pca, random) in mean-difference units (c = 1 moves each
    steered block by one mean persona difference). None: the fine grid for dev-test; each vector's old sweep for
    same-split. --baseline-coeffs overrides both."""

    def adapter_grid(self) -> tuple[float, ...]:
        if self.adapter_coeffs is not None:
            return tuple(self.adapter_coeffs)
        return FINE_GRID if self.select == "dev-test" else SAME_SPLIT_ADAPTER_COEFFS
