"""`compare` end to end on the tiny model: two methods, one seed, resumable from its cache."""

from __future__ import annotations

import pandas as pd
import pytest

from innerpissa.compare import Compare, run_compare
from innerpissa.train.config import preset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compare_two_methods_end_to_end_and_resume(tmp_path, shared_data):
    cmp = Compare(out=tmp_path / "cmp", preset="tiny", methods=("innerpissa", "mean_diff"), seeds=(0,),
                  n_pairs=12, epochs=1, n_dilemmas=6, adapter_coeffs=(-1.0, 0.0, 1.0),
                  baseline_coeffs=(-2.0, 0.0, 2.0), n_boot=50, data_dir=shared_data / "daily_dilemmas")
    paths = run_compare(cmp)
    for kind in ("summary", "plot", "rows", "methods"):
        assert paths[kind].exists(), kind
    rows = pd.read_csv(paths["rows"])
    assert set(rows["method"]) == {"innerpissa", "mean_diff"}
    assert set(rows[rows.method == "innerpissa"]["coeff"]) == {-1.0, 0.0, 1.0}
    # both methods scored the same rows
    per = rows.groupby("method")[["dilemma_idx"]].nunique()["dilemma_idx"]
    assert per.nunique() == 1 and per.iloc[0] == 6
    # c = 0 is the base model for both methods: identical scores
    base = rows[rows.coeff == 0].pivot_table(index=["dilemma_idx", "action_type"], columns="method", values="logp_yes")
    assert (base["innerpissa"] - base["mean_diff"]).abs().max() < 1e-4
    assert (tmp_path / "cmp" / "train" / "innerpissa_seed0" / "adapter" / "adapter.safetensors").exists()
    summary = paths["summary"].read_text()
    assert "innerpissa" in summary and "mean_diff" in summary

    # a second run reuses the trained adapter and every cached score: identical results
    again = pd.read_csv(run_compare(cmp)["rows"])
    pd.testing.assert_frame_equal(rows, again)


def test_compare_rejects_unknown_method(tmp_path):
    with pytest.raises(SystemExit, match="unknown method"):
        run_compare(Compare(out=tmp_path, methods=("innerpissa", "telepathy")))


def test_compare_lora_baseline_is_reused_exactly(tmp_path, shared_data):
    train = preset("tiny")
    train.adapter.r = 4
    cmp = Compare(out=tmp_path / "cmp", preset="tiny", train=train, methods=("lora",), seeds=(0,), n_pairs=12,
                  epochs=1, n_dilemmas=4, adapter_coeffs=(-1.0, 0.0, 1.0), n_boot=20, data_dir=shared_data / "daily_dilemmas")
    first = pd.read_csv(run_compare(cmp)["rows"])
    saved = tmp_path / "cmp" / "train" / "lora_seed0" / "adapter" / "adapter.safetensors"
    assert saved.exists()
    # drop the score cache: the second run must rebuild the LoRA from its saved, calibrated weights
    for f in (tmp_path / "cmp" / "cache").glob("lora_*.json"):
        f.unlink()
    again = pd.read_csv(run_compare(cmp)["rows"])
    pd.testing.assert_frame_equal(first, again, check_exact=False, atol=1e-6)
    by_c = first.pivot_table(index=["dilemma_idx", "action_type"], columns="coeff", values="logp_yes")
    assert (by_c[1.0] - by_c[0.0]).abs().max() > 0, "the trained LoRA does not change the model at c = 1"
