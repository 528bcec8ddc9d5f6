"""DailyDilemmas loading, labels (checked against hand counts and the upstream per-value annotations), errors,
and seeded sampling."""

from __future__ import annotations

import ast
import json

import pandas as pd
import pytest
from helpers import SHARED_DATA

from innerpissa.data import dilemmas as D

SHARED = SHARED_DATA
DD = SHARED / "daily_dilemmas"
EXAMPLE = SHARED / "innerpissa" / "example_data" / "dilemma-1687-values-ag.json"
needs_data = pytest.mark.skipif(not (DD / D.ACTIONS_FILE).is_file(),
                                reason=f"DailyDilemmas data not found at {DD} (shared data folder absent)")
T = "label:Virtue/Truthfulness"


@pytest.fixture(scope="module")
def values() -> pd.DataFrame:
    return pd.read_csv(DD / D.VALUES_FILE)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return D.load_dilemmas(DD)


def labels_of(df: pd.DataFrame, dilemma: int) -> pd.Series:
    rows = df[df["dilemma_idx"] == dilemma]
    assert len(rows) == 2 and (rows[D.label_columns(df)].nunique() == 1).all()  # broadcast to both rows
    return rows.iloc[0]


@needs_data
@pytest.mark.skipif(not EXAMPLE.is_file(), reason=f"example file {EXAMPLE} absent")
def test_labels_of_example_dilemma_by_hand(values):
    actions = pd.DataFrame(json.loads(EXAMPLE.read_text()))
    row = labels_of(D.label_actions(actions, values), 1687)
    # to_do: integrity, accountability, responsibility, trustworthiness
    # not_to_do: complicity, dishonesty, justice, uncertainty, truth, trust   (values.csv mappings)
    expected = {
        "Virtue/Truthfulness": -1,  # truth on the not_to_do side only ("dishonesty" maps to no virtue)
        "MFT/Fairness": 1,  # integrity, accountability - justice
        "MFT/Authority": 1,  # responsibility, trustworthiness - complicity
        "MFT/Loyalty": -1,  # - trust
        "WVS/Survival": -1,  # trustworthiness - (uncertainty, trust)
        "Emotion/trust": 0,  # (integrity, trustworthiness) - (complicity, trust)
        "Maslow/self-esteem": 4,
        "Value/dishonesty": -1, "Value/integrity": 1, "Value/honesty": 0,
    }
    assert {k: int(row[D.LABEL_PREFIX + k]) for k in expected} == expected


@needs_data
def test_labels_of_the_8_row_sample_match_hand_counts_and_upstream_annotations(data):
    sample = pd.read_csv(DD / "dilemmas_with_detail_by_action_test.csv")
    ids = sorted(sample["idx"].unique())
    assert ids == [55, 107, 176, 257]
    hand = {  # counted from the sample file's per-value columns (values_names with mft/virtue)
        55: {"Virtue/Truthfulness": 1, "MFT/Fairness": 3, "MFT/Authority": 1, "MFT/Care": -1, "MFT/Loyalty": 1},
        107: {"Virtue/Courage": 1, "Virtue/Patience": -1, "MFT/Loyalty": 2, "MFT/Care": 0, "MFT/Authority": 0},
        176: {"Virtue/Truthfulness": 1, "MFT/Fairness": 1, "Value/professional integrity": 1, "Value/caution": -1},
        257: {"Virtue/Courage": 0, "MFT/Care": 1, "MFT/Loyalty": 2, "MFT/Fairness": 1, "MFT/Authority": -1},
    }
    for dilemma, exp in hand.items():
        row = labels_of(data, dilemma)
        assert {k: int(row[D.LABEL_PREFIX + k]) for k in exp} == exp, dilemma
    # independent reference: every framework label recomputed from the upstream per-value annotations
    for rec in sample.itertuples(index=False):
        assert D.parse_values(rec.values_names) == data[(data.dilemma_idx == rec.idx)
                                                        & (data.action_type == rec.action_type)]["values"].iloc[0]
    for fw in D.FRAMEWORKS:
        counts: dict[tuple[int, str], int] = {}
        for rec in sample.itertuples(index=False):
            sign = 1 if rec.action_type == "to_do" else -1
            cats = ast.literal_eval(getattr(rec, fw.lower()).replace("nan", "None"))
            for cat in cats:
                if cat is not None:
                    counts[(rec.idx, cat)] = counts.get((rec.idx, cat), 0) + sign
        for (dilemma, cat), n in counts.items():
            assert labels_of(data, dilemma)[f"{D.LABEL_PREFIX}{fw}/{cat}"] == n, (dilemma, fw, cat)


@needs_data
def test_full_data_shape_and_truthfulness_counts(data):
    assert len(data) == 2720 and data["dilemma_idx"].nunique() == 1360
    per = data.groupby("dilemma_idx")[T].first()
    assert (per != 0).sum() == 522  # METHOD section 7: "all 1360 hold ~522"
    assert "Virtue/Truthfulness" in D.framework_axes(data) and len(D.framework_axes(data)) == 37


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(D.DilemmasError, match="does not exist"):
        D.resolve_dir(tmp_path / "nope")
    monkeypatch.setenv(D.ENV_DIR, str(tmp_path / "nope2"))
    with pytest.raises(D.DilemmasError, match="INNERPISSA_DILEMMAS_DIR"):
        D.resolve_dir()
    monkeypatch.setenv(D.ENV_DIR, str(tmp_path))
    assert D.resolve_dir() == tmp_path
    with pytest.raises(D.DilemmasError, match="missing DailyDilemmas file"):
        D.read_local(tmp_path)
    values = pd.DataFrame({"value": ["honesty"], "WVS": [None], "MFT": ["Fairness"], "Virtue": ["Truthfulness"],
                           "Emotion": [None], "Maslow": [None]})
    good = pd.DataFrame({"dilemma_idx": [1, 1], "dilemma_situation": ["s", "s"], "action_type": ["to_do", "not_to_do"],
                         "action": ["a", "b"], "values_aggregated": ["['honesty']", "[]"]})
    assert D.label_actions(good, values)[T].tolist() == [1, 1]
    with pytest.raises(D.DilemmasError, match="lacks columns.*action"):
        D.label_actions(good.drop(columns="action"), values)
    with pytest.raises(D.DilemmasError, match="unparsable.*row 1, dilemma 1"):
        D.label_actions(good.assign(values_aggregated=["['honesty']", "['a', 'b'"]), values)
    with pytest.raises(D.DilemmasError, match="must be a list"):
        D.parse_values("'honesty'")
    with pytest.raises(D.DilemmasError, match="exactly one to_do"):
        D.label_actions(good.iloc[:1], values)
    with pytest.raises(D.DilemmasError, match="lacks columns"):
        D.label_actions(good, values.drop(columns="Virtue"))


@needs_data
def test_sampling_is_seeded_random_and_keeps_pairs(data, tmp_path):
    a = D.sample_dilemmas(data, 64, seed=3)
    b = D.sample_dilemmas(data, 64, seed=3)
    c = D.sample_dilemmas(data, 64, seed=4)
    assert a.equals(b) and not a["dilemma_idx"].equals(c["dilemma_idx"])
    assert a["dilemma_idx"].nunique() == 64 and len(a) == 128
    assert (a.groupby("dilemma_idx")["action_type"].apply(sorted) == pd.Series([["not_to_do", "to_do"]] * 64,
            index=sorted(a["dilemma_idx"].unique()))).all()
    # random, not target-first: the labelled share stays near the base rate 522/1360 = 0.38 (first-64 would be 1)
    frac = (a.groupby("dilemma_idx")[T].first() != 0).mean()
    assert 0.15 < frac < 0.65
    lab = D.sample_dilemmas(data, None, seed=0, labelled_only=True, n_neutral=50)
    per = lab.groupby("dilemma_idx")[T].first()
    assert (per != 0).sum() == 522 and (per == 0).sum() == 50
    lab = D.sample_dilemmas(data, 20, seed=0, labelled_only=True, n_neutral=10)
    assert lab["dilemma_idx"].nunique() == 30
    path = D.save_sample(a, tmp_path / "s" / "sample.csv", seed=3, axes=["Virtue/Truthfulness"])
    saved = pd.read_csv(path)
    assert saved["dilemma_idx"].tolist() == a["dilemma_idx"].tolist() and (saved["sample_seed"] == 3).all()
    assert T in saved.columns and not list((tmp_path / "s").glob(".*"))  # no temp file left
