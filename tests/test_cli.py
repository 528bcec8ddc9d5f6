"""The command line as a user types it: train -> eval -> export -> generate on the tiny model."""

from __future__ import annotations

import json

import pytest
from helpers import usage_error

from innerpissa.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_eval_export_generate(tmp_path, shared_data, capsys):
    run = tmp_path / "run"
    main(["train", "--preset", "tiny", "--out", str(run), "--epochs", "1", "--data.n-pairs", "12",
          "--adapter.r", "4", "--no-progress"])
    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").exists()
    assert json.loads((run / "summary.json").read_text())["steps"] > 0

    main(["eval", "--adapter", str(adapter), "--model", "tiny-random", "--coeffs", "-1", "0", "1",
          "--n-dilemmas", "3", "--n-boot", "20", "--no-examples", "--out", str(tmp_path / "eval"),
          "--data-dir", str(shared_data / "daily_dilemmas")])
    assert (tmp_path / "eval" / "summary.md").exists() and (tmp_path / "eval" / "dose_response.png").exists()

    main(["export", "--adapter", str(adapter), "--model", "tiny-random", "--c", "0.5", "--out", str(tmp_path / "lora")])
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    main(["generate", "--adapter", str(adapter), "--model", "tiny-random", "--max-new-tokens", "3",
          "--prompt", "hello"])
    out = capsys.readouterr().out
    assert "c=-1.00:" in out and "c=+1.00:" in out


def test_train_rejects_unknown_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--no-such-flag", "1"])
    msg = usage_error(e, capsys)
    assert "Unrecognized options: --no-such-flag" in msg and "innerpissa train --help" in msg, msg
    assert not (tmp_path / "run").exists()  # refused before anything was written
