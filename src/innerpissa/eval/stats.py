"""The statistics every evaluation shares (one home): the percentile bootstrap CI of a mean, a paired
difference and its CI, a percentile interval of resampled statistics, and Spearman's rank correlation.

Pure functions of arrays; the task-specific resampling (DailyDilemmas' labelled and label-0 dilemmas drawn
apart, `metrics.bootstrap_scores`) builds on `percentile_interval`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of resampled statistics; (nan, nan) if any is not finite."""
    samples = np.asarray(samples, dtype=float)
    if not np.isfinite(samples).all():
        return math.nan, math.nan
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_mean_ci(x, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `x` (items resampled with replacement, NaNs dropped; numpy's
    seeded generator); (nan, nan) when nothing is left."""
    x = np.asarray(x, dtype=float).reshape(-1)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    return percentile_interval(x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1), level)


def paired_mean_ci(a: pd.Series, b: pd.Series, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference a - b over the items (index labels) both have, in a's order, and its bootstrap
    CI (nan when none is shared)."""
    common = a.index.intersection(b.index)
    d = (a.loc[common] - b.loc[common]).to_numpy(dtype=float)
    return (float(np.nanmean(d)) if np.isfinite(d).any() else math.nan, *bootstrap_mean_ci(d, n_boot, seed, level))


def paired_nanmean_diff_ci(a: pd.Series, b: pd.Series, n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float, float]:
    """nanmean(a) - nanmean(b) over the items (index labels) both have, each mean over its own non-NaN entries
    (a NaN marks an excluded item, e.g. an invalid continuation), and its percentile bootstrap CI resampling the
    items with their pairs kept together (numpy's seeded generator, as `bootstrap_mean_ci`; resamples in which
    a side has no value are dropped). Without NaNs it equals `paired_mean_ci`. (nan, nan, nan) when a side has
    no value at all."""
    common = a.index.intersection(b.index)
    x, y = a.loc[common].to_numpy(dtype=float), b.loc[common].to_numpy(dtype=float)
    if not (np.isfinite(x).any() and np.isfinite(y).any()):
        return math.nan, math.nan, math.nan
    point = float(np.nanmean(x) - np.nanmean(y))
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    xs, ys = x[idx], y[idx]
    ok = np.isfinite(xs).any(1) & np.isfinite(ys).any(1)
    if not ok.any():
        return point, math.nan, math.nan
    diffs = np.nanmean(xs[ok], 1) - np.nanmean(ys[ok], 1)
    return (point, *percentile_interval(diffs, level))


def spearman(x: Sequence[float], y: Sequence[float], min_points: int = 2) -> float:
    """Spearman's rank correlation (average ranks for ties) over the pairs where both are finite; NaN with
    fewer than `min_points` of them or when either side does not vary."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < min_points:
        return math.nan
    rx, ry = rankdata(x[ok]), rankdata(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
