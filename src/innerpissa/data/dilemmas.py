"""DailyDilemmas (Chiu et al., ICLR 2025, CC-BY-4.0): the held-out evaluation set, its value labels, sampling.

Each of the 1360 dilemmas has two rows, a `to_do` and a `not_to_do` action, each with the list of values it
serves (`values_aggregated`). `values.csv` maps a value to a category of five frameworks (WVS, MFT, Virtue,
Emotion, Maslow). The label of a dilemma on an axis X (METHOD section 7) is

    #values of the to_do action mapping to X  -  #values of the not_to_do action mapping to X

broadcast to both rows, so label 0 means "not about X". Axes are `Framework/Category` (e.g.
`Virtue/Truthfulness`, `MFT/Fairness`) and `Value/<value>` for each raw value (e.g. `Value/honesty`).
Label columns in the returned frame are named `label:<axis>`.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

ENV_DIR = "INNERPISSA_DILEMMAS_DIR"
DEFAULT_DIR = Path("..") / "shared" / "data" / "daily_dilemmas"
ACTIONS_FILE = "dilemma_to_action_to_values_aggregated.csv"
VALUES_FILE = "values.csv"
HF_DATASET = "kellycyy/daily_dilemmas"
HF_ACTIONS_CONFIG = "Dilemmas_with_values_aggregated"
HF_VALUES_CONFIG = "Values"
FRAMEWORKS = ("WVS", "MFT", "Virtue", "Emotion", "Maslow")
ACTION_COLUMNS = ("dilemma_idx", "dilemma_situation", "action_type", "action", "values_aggregated")
ACTION_TYPES = ("to_do", "not_to_do")
LABEL_PREFIX = "label:"
DEFAULT_TARGET = "Virtue/Truthfulness"


class DilemmasError(ValueError):
    """The DailyDilemmas files are missing or malformed (the message says which and how to fix it)."""


# ---------------------------------------------------------------------------------------------- reading


def resolve_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: the argument, else `$INNERPISSA_DILEMMAS_DIR`, else `../shared/data/daily_dilemmas`
    if it exists (relative to the working directory), else None (meaning: try the Hugging Face hub).

    A folder given explicitly (argument or environment) must exist: silently falling back to the hub would
    evaluate on data the user did not ask for.
    """
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_DIR) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            source = "argument" if data_dir is not None else f"${ENV_DIR}"
            raise DilemmasError(f"DailyDilemmas folder {path} (from {source}) does not exist")
        return path
    return DEFAULT_DIR if DEFAULT_DIR.is_dir() else None


def _check_columns(df: pd.DataFrame, required: Iterable[str], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DilemmasError(f"{what} lacks columns {missing}; it has {list(df.columns)}")


def read_local(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(actions, values) from a folder holding the two CSV files of the Hugging Face dataset."""
    folder = Path(folder)
    paths = {name: folder / name for name in (ACTIONS_FILE, VALUES_FILE)}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DilemmasError(
            f"missing DailyDilemmas file(s): {missing}. The folder needs {ACTIONS_FILE} (config "
            f"{HF_ACTIONS_CONFIG} of {HF_DATASET}) and {VALUES_FILE} (config {HF_VALUES_CONFIG})."
        )
    return pd.read_csv(paths[ACTIONS_FILE]), pd.read_csv(paths[VALUES_FILE])


def read_hub() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(actions, values) from the Hugging Face hub through the optional `datasets` package."""
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise DilemmasError(
            f"no local DailyDilemmas folder (set ${ENV_DIR} or pass data_dir / --data-dir) and the `datasets` package "
            "is not installed to fetch it: pip install 'innerpissa[hub]'"
        ) from e
    actions = load_dataset(HF_DATASET, HF_ACTIONS_CONFIG, split="test").to_pandas()
    values = load_dataset(HF_DATASET, HF_VALUES_CONFIG, split="test").to_pandas()
    return actions, values


def parse_values(cell: object, where: str = "") -> list[str]:
    """A `values_aggregated` cell (a stringified Python list, or already a list) as lower-case strings."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        items = list(cell)
    else:
        try:
            items = ast.literal_eval(str(cell))
        except (ValueError, SyntaxError) as e:
            raise DilemmasError(f"unparsable values_aggregated {cell!r}{where}: {e}") from e
        if not isinstance(items, (list, tuple)):
            raise DilemmasError(f"values_aggregated must be a list, got {cell!r}{where}")
    return [str(v).strip().lower() for v in items]


# --------------------------------------------------------------------------------------------- labelling


def axis_members(values: pd.DataFrame) -> dict[str, frozenset[str]]:
    """Every axis and the set of values mapping to it: `Framework/Category` and `Value/<value>`."""
    _check_columns(values, ("value", *FRAMEWORKS), "values table")
    values = values.assign(value=values["value"].astype(str).str.strip().str.lower())
    axes: dict[str, set[str]] = {}
    for fw in FRAMEWORKS:
        for value, cat in zip(values["value"], values[fw], strict=True):
            if isinstance(cat, str) and cat.strip():
                axes.setdefault(f"{fw}/{cat.strip()}", set()).add(value)
    for value in values["value"]:
        axes.setdefault(f"Value/{value}", set()).add(value)
    return {k: frozenset(v) for k, v in axes.items()}


def label_actions(actions: pd.DataFrame, values: pd.DataFrame) -> pd.DataFrame:
    """The actions table with parsed `values` lists and one `label:<axis>` column (int) per axis.

    Dilemmas must have exactly one to_do and one not_to_do row; labels are the to_do count minus the
    not_to_do count, identical on both rows of a dilemma.
    """
    _check_columns(actions, ACTION_COLUMNS, "actions table")
    actions = actions.reset_index(drop=True).copy()
    bad_types = sorted(set(actions["action_type"]) - set(ACTION_TYPES))
    if bad_types:
        raise DilemmasError(f"unknown action_type(s) {bad_types}; expected {ACTION_TYPES}")
    per_dilemma = actions.groupby("dilemma_idx")["action_type"].agg(lambda s: tuple(sorted(s)))
    broken = per_dilemma[per_dilemma != tuple(sorted(ACTION_TYPES))]
    if len(broken):
        raise DilemmasError(f"dilemmas without exactly one to_do and one not_to_do row: {broken.index[:10].tolist()}")
    actions["values"] = [
        parse_values(cell, f" (row {i}, dilemma {d})")
        for i, (cell, d) in enumerate(zip(actions["values_aggregated"], actions["dilemma_idx"], strict=True))
    ]
    axes = axis_members(values)
    value_to_axes: dict[str, list[int]] = {}
    for j, members in enumerate(axes.values()):
        for v in members:
            value_to_axes.setdefault(v, []).append(j)
    counts = np.zeros((len(actions), len(axes)), dtype=np.int64)
    for i, vals in enumerate(actions["values"]):
        for v in vals:  # a value listed twice counts twice, as the METHOD's "#values" says
            counts[i, value_to_axes.get(v, [])] += 1
    sign = np.where(actions["action_type"].to_numpy() == "to_do", 1, -1)
    signed = pd.DataFrame(counts * sign[:, None], columns=[LABEL_PREFIX + a for a in axes])
    per_dilemma_label = signed.groupby(actions["dilemma_idx"].to_numpy()).transform("sum")
    return pd.concat([actions, per_dilemma_label.astype(np.int16)], axis=1)


def label_columns(df: pd.DataFrame) -> list[str]:
    """The `label:<axis>` columns of a frame."""
    return [c for c in df.columns if c.startswith(LABEL_PREFIX)]


def framework_axes(df: pd.DataFrame) -> list[str]:
    """All framework-category axes present (not the raw `Value/` ones), sorted."""
    return sorted(c.removeprefix(LABEL_PREFIX) for c in label_columns(df) if not c.startswith(LABEL_PREFIX + "Value/"))


def load_dilemmas(data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """All 2720 labelled rows, from the local folder (see `resolve_dir`) or else the Hugging Face hub."""
    folder = resolve_dir(data_dir)
    actions, values = read_local(folder) if folder is not None else read_hub()
    return label_actions(actions, values)


# ---------------------------------------------------------------------------------------------- sampling


def sample_dilemmas(
    df: pd.DataFrame,
    n_dilemmas: int | None = None,
    seed: int = 0,
    target_axis: str = DEFAULT_TARGET,
    labelled_only: bool = False,
    n_neutral: int = 128,
) -> pd.DataFrame:
    """A seeded random sample of whole dilemmas (both rows kept), in dilemma order of the draw.

    Plain mode: `n_dilemmas` dilemmas drawn uniformly (None = all). Never target-tagged dilemmas first:
    that biased the author's quick evaluations (METHOD section 9).
    `labelled_only`: every dilemma with a non-zero label on `target_axis` (or a random `n_dilemmas` of them)
    plus a random `n_neutral` label-0 dilemmas, which the bias-corrected score needs for its to_do-habit term.
    """
    if n_dilemmas is not None and n_dilemmas <= 0:
        raise DilemmasError(f"n_dilemmas must be a positive number of dilemmas (or None for all), got {n_dilemmas}")
    if LABEL_PREFIX + target_axis not in df.columns:
        import difflib

        close = difflib.get_close_matches(target_axis, framework_axes(df), n=5, cutoff=0.5)
        raise DilemmasError(f"unknown target axis {target_axis!r}; "
                            + (f"did you mean {close}?" if close else f"e.g. {framework_axes(df)[:5]}"))
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(df["dilemma_idx"].unique()))

    def draw(pool: np.ndarray, n: int | None) -> np.ndarray:
        return rng.permutation(pool)[: len(pool) if n is None else n]

    if labelled_only:
        col = LABEL_PREFIX + target_axis
        if col not in df.columns:
            raise DilemmasError(f"unknown target axis {target_axis!r}; e.g. {framework_axes(df)[:5]}")
        lab = df.groupby("dilemma_idx")[col].first().reindex(ids).to_numpy()
        chosen = np.concatenate([draw(ids[lab != 0], n_dilemmas), draw(ids[lab == 0], n_neutral)])
    else:
        chosen = draw(ids, n_dilemmas)
    order = {d: i for i, d in enumerate(chosen)}
    out = df[df["dilemma_idx"].isin(order)].copy()
    out["_order"] = out["dilemma_idx"].map(order)
    out["_type"] = out["action_type"].map({t: i for i, t in enumerate(ACTION_TYPES)})
    return out.sort_values(["_order", "_type"]).drop(columns=["_order", "_type"]).reset_index(drop=True)


def save_sample(rows: pd.DataFrame, path: str | os.PathLike, seed: int, axes: Sequence[str] = ()) -> Path:
    """Write which rows were evaluated (ids, action, the chosen axes' labels, the sampling seed), atomically."""
    from innerpissa.fileio import atomic_write_text

    cols = ["dilemma_idx", "action_type"] + [c for c in ("idx",) if c in rows.columns]
    cols += [LABEL_PREFIX + a for a in axes if LABEL_PREFIX + a in rows.columns]
    table = rows[cols].assign(sample_seed=seed)
    return atomic_write_text(path, table.to_csv(index=False))
