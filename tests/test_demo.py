"""The demo: its pure score table and verdict on hand-made numbers, and a full run on the tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from innerpissa.demo import ScoreRow, score_table, verdict


def test_score_table_means_and_ci_per_coefficient():
    df = pd.DataFrame({"c": [-1.0] * 3 + [0.0] * 3 + [1.0] * 3, "prompt_idx": [0, 1, 2] * 3,
                       "score": [-0.5, -0.4, -0.6, 0.0, 0.1, -0.1, 0.5, 0.7, 0.6],
                       "nll": [1.0, 1.2, np.nan, 0.8, 0.8, 0.8, 0.9, 0.9, 0.9],
                       "distinct2": [0.9] * 9})
    rows = score_table(df, n_boot=200)
    assert [r.c for r in rows] == [-1.0, 0.0, 1.0]
    assert np.allclose([r.mean for r in rows], [-0.5, 0.0, 0.6])
    assert rows[0].nll == 1.1  # NaN NLL (an empty continuation) is left out of the mean
    for r in rows:
        assert r.lo <= r.mean <= r.hi
    # the change vs c = 0 is paired by prompt: +1 gains 0.5, 0.6, 0.7 on prompts 0, 1, 2
    assert np.isclose(rows[2].delta, 0.6) and 0.5 <= rows[2].delta_lo <= rows[2].delta_hi <= 0.7
    assert rows[1].delta == 0.0 and np.isclose(rows[0].delta, -0.5)


def test_verdict_says_what_holds():
    ok = [ScoreRow(-1, -0.5, -0.6, -0.4, -0.5, -0.6, -0.4, 1, 1), ScoreRow(0, 0.0, -0.1, 0.1, 0, 0, 0, 1, 1),
          ScoreRow(1, 0.5, 0.4, 0.6, 0.5, 0.4, 0.6, 1, 1)]
    assert verdict(ok).count("yes") == 3
    flat = [ScoreRow(-1, 0.1, -0.2, 0.4, 0.1, -0.1, 0.3, 1, 1), ScoreRow(0, 0.0, -0.1, 0.1, 0, 0, 0, 1, 1),
            ScoreRow(1, 0.05, -0.2, 0.3, 0.05, -0.1, 0.2, 1, 1)]
    v = verdict(flat)
    assert "monotone in c: NO" in v and "above 0 (paired CI): NO" in v and "below 0 (paired CI): NO" in v


def test_demo_runs_end_to_end_on_the_tiny_model(tmp_path, capsys):
    from innerpissa.cli import Demo

    out = tmp_path / "demo"
    Demo(model="tiny-random", out=out, n_pairs=16, epochs=1, n_prompts=4, n_show=2, max_new_tokens=6,
         skip_honesty=True).run()
    text = capsys.readouterr().out
    assert str(out.resolve()) in text.splitlines()[0]
    assert text.count("c=+1 cheerful|") == 2 and text.count("c=-1 gloomy") == 2
    assert "monotone in c:" in text
    gens = pd.read_csv(out / "sentiment_generations.csv")
    assert sorted(gens["c"].unique()) == [-1.0, 0.0, 1.0] and len(gens) == 12
    assert (out / "sentiment" / "adapter").is_dir()
