"""The reliability promises (docs/RELIABILITY.md), one test per BAD row of the 2026-11-26 probe at least:
run folders never clobbered, checked resume, divergence caught anywhere, adapter folders safe as a unit,
umask-respecting files, one-line CLI errors, and bad numbers refused before anything is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import warnings
from pathlib import Path

import pytest
import torch

import innerpissa as ip
from innerpissa.errors import CorruptAdapterError, ResumeMismatch, RunFolderError
from innerpissa.fileio import atomic_write_json
from innerpissa.train.config import preset
from innerpissa.train.runfolder import default_out
from innerpissa.train.trainer import Trainer, TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(out: Path, **kw):
    cfg = preset("tiny")
    cfg.out, cfg.calibrate, cfg.data.n_pairs = out, False, 16
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    train(_cfg(out))
    return out


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


# ---------------------------------------------------------------- 1. run folders (rows 4.6, 4.7)


def test_train_refuses_a_folder_holding_a_run(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "r")
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match="--resume.*--overwrite"):
        train(_cfg(run, seed=9))
    assert _snapshot(run) == before
    train(_cfg(run, seed=9, overwrite=True))
    assert _snapshot(run)[str(Path("adapter/adapter.safetensors"))] != before[str(Path("adapter/adapter.safetensors"))]


def test_run_failing_before_its_first_step_leaves_the_folder_untouched(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "r")
    before = _snapshot(run)
    pairs = tmp_path / "pairs.jsonl"  # endings differ: fails after the model loads (row 3.10 / 4.7)
    pairs.write_text("".join(json.dumps({"positive": f"I am honest {i}. I tell the truth",
                                          "negative": f"I am a liar {i}. I lie whenever"}) + "\n" for i in range(12)))
    cfg = _cfg(run, overwrite=True)
    cfg.data.pairs_file = pairs
    with pytest.raises(ValueError, match="must end in the same text"):
        train(cfg)
    assert _snapshot(run) == before  # metrics.jsonl not truncated, nothing replaced


def test_divergence_at_the_first_step_leaves_an_overwritten_folder_untouched(finished_run, tmp_path, monkeypatch):
    run = _copy(finished_run, tmp_path / "r")
    before = _snapshot(run)
    original = Trainer.losses
    monkeypatch.setattr(Trainer, "losses", lambda self, b: (original(self, b)[0] * float("nan"), {}))
    with pytest.raises(TrainingDiverged, match="no checkpoint of this run was written yet"):
        train(_cfg(run, overwrite=True))
    assert _snapshot(run) == before


def test_default_output_folder_is_new_per_run(tmp_path):
    a = default_out("honesty", tmp_path)
    a.mkdir()
    b = default_out("honesty", tmp_path)
    assert a != b and a.name.startswith("honesty-") and not b.exists()


# ---------------------------------------------------------------- 2. checked resume (rows 4.3, 4.4)


def test_resume_with_other_settings_fails_naming_the_fields(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "r")
    before = _snapshot(run)
    cfg = _cfg(run, resume=True, seed=5, lr=0.05)
    cfg.adapter.seed = 5
    with pytest.raises(ResumeMismatch) as e:
        train(cfg)
    msg = str(e.value)
    assert "seed: 0 -> 5" in msg and "lr: 0.01 -> 0.05" in msg and "adapter.seed" in msg
    assert _snapshot(run) == before  # config.json keeps the true provenance


def test_resume_of_a_checkpoint_with_other_pairs_fails(tmp_path, monkeypatch):
    run = tmp_path / "cut"
    calls = {"n": 0}
    original = Trainer.losses

    def interrupt(self, batch):
        calls["n"] += 1
        if calls["n"] == 5 and torch.is_grad_enabled():
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "losses", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(run, epochs=3))
    monkeypatch.setattr(Trainer, "losses", original)
    assert (run / "checkpoint" / "state.pt").exists()
    more = _cfg(run, epochs=3, resume=True)
    more.data.n_pairs = 24  # row 4.4: crashed with IndexError before
    with pytest.raises(ResumeMismatch, match=r"data.n_pairs: 16 -> 24.*pairs.train_sha256"):
        train(more)
    other_seed = _cfg(run, epochs=3, resume=True, seed=4)
    with pytest.raises(ResumeMismatch, match="pairs.train_sha256"):
        train(other_seed)
    # the same settings resume, also with other speed switches (same numbers up to rounding)
    res = train(_cfg(run, epochs=3, resume=True, shared_prefix=False, batch_pm=False))
    assert res.summary["steps"] == 9 and not res.already_finished


def test_resuming_a_finished_run_is_a_noop(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "r")
    before = _snapshot(run)
    res = train(_cfg(run, resume=True))
    assert res.already_finished and res.summary["steps"] > 0
    assert _snapshot(run) == before


# ---------------------------------------------------------------- 3. divergence (rows 4.8, 4.9)


def test_divergence_on_the_last_step_writes_no_adapter(tmp_path):
    cfg = _cfg(tmp_path / "nan", epochs=1, lr=1e30, clip=0.0, batch_size=8)
    cfg.data.n_pairs = 8
    cfg.adapter.s_mode = "mult"
    with pytest.raises(TrainingDiverged, match="no checkpoint of this run was written yet"):
        train(cfg)
    assert not (cfg.out / "adapter").exists() and not (cfg.out / "summary.json").exists()


def test_non_finite_validation_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_total": float("nan")})
    with pytest.raises(TrainingDiverged, match="validation became non-finite"):
        train(_cfg(tmp_path / "v"))
    assert not (tmp_path / "v" / "adapter").exists()


def test_divergence_message_points_to_a_checkpoint_that_exists(tmp_path, monkeypatch):
    original, calls = Trainer.losses, {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        total, terms = original(self, batch)
        return (total * float("nan"), terms) if calls["n"] > 8 else (total, terms)

    monkeypatch.setattr(Trainer, "losses", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        train(_cfg(tmp_path / "c", epochs=3))
    path = str(e.value).split(" is in ")[1].split(". ")[0]
    assert Path(path, "state.pt").exists(), e.value


def test_json_outputs_are_strict(tmp_path):
    atomic_write_json(tmp_path / "s.json", {"a": float("nan"), "b": [float("inf"), 1.0]})

    def reject(c):
        raise AssertionError(f"bare {c} in JSON")

    assert json.loads((tmp_path / "s.json").read_text(), parse_constant=reject) == {"a": None, "b": [None, 1.0]}


def test_save_adapter_refuses_non_finite_tensors(tiny, tmp_path):
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    with torch.no_grad():
        ip.adapter_parameters(model)[0].fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        ip.save_adapter(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- 4. adapter folders (rows 5.1, 5.3, 5.4, 5.5, 5.12)


def _saved(tiny, folder: Path, **cfg) -> Path:
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4, **cfg))
    with torch.no_grad():
        for p in ip.adapter_parameters(model):
            p.normal_(std=0.1)
    ip.save_adapter(model, folder, coeff_range=(-1.0, 1.0))
    ip.detach_adapter(model)
    return folder


def test_corrupted_tensor_file_is_detected(tiny, tmp_path):
    folder = _saved(tiny, tmp_path / "a")
    f = folder / "adapter.safetensors"
    data = bytearray(f.read_bytes())
    for i in range(len(data) - 200, len(data) - 100):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptAdapterError, match=f"corrupt adapter file {f}.*re-save or re-train"):
        ip.load_adapter(tiny[0], folder)
    f.write_bytes(bytes(data[:5]))
    with pytest.raises(CorruptAdapterError, match="re-save or re-train"):
        ip.load_adapter(tiny[0], folder)
    (folder / "adapter_config.json").write_text((folder / "adapter_config.json").read_text()[:200])
    with pytest.raises(CorruptAdapterError, match="adapter_config.json"):
        ip.load_adapter(tiny[0], folder)


def test_failed_overwrite_keeps_the_old_adapter_whole(tiny, tmp_path, monkeypatch):
    folder = _saved(tiny, tmp_path / "a")
    before = _snapshot(folder)
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    import innerpissa.adapter.io as io

    def full_disk(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "atomic_write_json", full_disk)  # the JSON, written second, fails (row 5.12)
    with pytest.raises(OSError):
        ip.save_adapter(model, folder, extra={"big": "x" * 10_000})
    assert _snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"], "temporary folders left behind"


def test_load_refuses_an_attached_adapter_with_another_config(tiny, tmp_path):
    folder = _saved(tiny, tmp_path / "a", s_mode="add", max_angle=0.3)
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4, s_mode="mult", max_angle=0.05))
    with pytest.raises(ValueError, match="s_mode: 'mult' attached vs 'add' saved.*detach_adapter"):
        ip.load_adapter(model, folder)
    ip.detach_adapter(model)
    ip.load_adapter(model, folder)  # a bare model gets the saved configuration
    from innerpissa.adapter import adapter_config

    assert adapter_config(model).s_mode == "add"


def test_load_refuses_another_model_type(tiny, tmp_path):
    folder = _saved(tiny, tmp_path / "a")
    qwen, _ = ip.load_model("tiny-random-qwen3")
    with pytest.raises(ValueError, match="'llama' model, this one is 'qwen3'"):
        ip.load_adapter(qwen, folder)


def test_coefficient_range_is_recorded_and_far_steering_warns_once(tiny, tmp_path):
    folder = _saved(tiny, tmp_path / "a")
    assert ip.read_adapter_meta(folder)["coeff_range"] == [-1.0, 1.0]
    model, _ = tiny
    ip.load_adapter(model, folder)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with ip.steer(model, 1.5):
            pass
        assert not w
        for c in (50.0, -50.0):
            with ip.steer(model, c):
                pass
    assert len([x for x in w if "twice the range" in str(x.message)]) == 1


def test_steer_rejects_non_finite_coefficients(tiny):
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    for c in (float("nan"), float("inf"), torch.tensor([1.0, float("nan")])):
        with pytest.raises(ValueError, match="finite"), ip.steer(model, c):
            pass


def test_attach_validates_every_target_before_wrapping_any(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"r=48 exceeds .* of model\.layers\.\d+\.self_attn\.k_proj"):
        ip.attach(model, ip.AdapterConfig(r=48, target_modules=("q_proj", "k_proj")))
    assert not ip.adapter_layers(model)
    ip.attach(model, ip.AdapterConfig(r=16, target_modules=("q_proj", "k_proj")))


def test_export_from_the_embedded_model_names_the_upstream_id(tiny, tmp_path):
    model, _ = tiny
    model.config.name_or_path = "smollm2"
    ip.attach(model, ip.AdapterConfig(r=4))
    ip.export_lora(model, tmp_path / "lora", 1.0)
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    info = json.loads((tmp_path / "lora" / "innerpissa_export.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "dequantised" in info["note"]


# ---------------------------------------------------------------- 5. file modes (row 5.13)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_respect_the_umask(tiny, tmp_path, mask):
    old = os.umask(mask)
    try:
        folder = _saved(tiny, tmp_path / "a")
        atomic_write_json(tmp_path / "s.json", {})
    finally:
        os.umask(old)
    for f in (folder / "adapter.safetensors", folder / "adapter_config.json", tmp_path / "s.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask


# ---------------------------------------------------------------- 6. inputs and the CLI (rows 3.4, 3.5, 3.8, 7.6, 9.1)


def test_input_files_bom_encoding_and_json_errors_name_file_and_line(tmp_path):
    from innerpissa.data.pairs import load_pairs

    bom = tmp_path / "bom.csv"
    bom.write_bytes("positive,negative\nI am honest. Yes,I am a liar. Yes\n".encode("utf-8-sig"))
    assert load_pairs(bom)[0].positive == "I am honest. Yes"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("positive,negative\na,b\nc\xeate,d\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{latin}:3: not UTF-8"):
        load_pairs(latin)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"positive": "a", "negative": "b"},\n]')
    with pytest.raises(ValueError, match=f"{bad}:3: invalid JSON"):
        load_pairs(bad)
    short = tmp_path / "short.csv"
    short.write_text("positive,negative\na,b\nonly one\n")
    with pytest.raises(ValueError, match="line 3 has no value for \\['negative'\\]"):
        load_pairs(short)


@pytest.mark.parametrize("flag,value", [("--n-dilemmas", "0"), ("--n-dilemmas", "-1"), ("--batch-size", "0"),
                                        ("--coeffs", "nan")])
def test_eval_rejects_bad_numbers_before_writing(tmp_path, flag, value):
    from innerpissa.cli import main

    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "tiny-random", "--out", str(out), flag, value])
    assert str(e.value).startswith("error: ") and flag in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    from innerpissa.cli import main

    args = ["generate", "--adapter", str(tmp_path / "nope"), "--model", "tiny-random"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert "not an innerpissa adapter folder" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError):
        main([*args, "--debug"])
    monkeypatch.setenv("INNERPISSA_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(args)


def test_train_cli_refuses_an_existing_run_in_one_line(finished_run):
    from innerpissa.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny", "--out", str(finished_run)])
    assert str(e.value).startswith("error: ") and "--overwrite" in str(e.value)
    with pytest.raises(SystemExit, match="--batch-size 0 is out of range"):
        main(["train", "--preset", "tiny", "--out", str(finished_run / "x"), "--batch-size", "0"])
    assert not (finished_run / "x").exists()


def test_train_is_listed_among_the_subcommands(capsys):
    from innerpissa.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train" in capsys.readouterr().out.split("subcommands")[-1]


def test_demo_says_where_to_find_dailydilemmas(tmp_path, monkeypatch):
    from innerpissa.cli import Demo
    from innerpissa.data.dilemmas import DilemmasError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INNERPISSA_DILEMMAS_DIR", raising=False)
    with pytest.raises(DilemmasError, match="does not exist"):
        Demo(model="tiny-random", out=tmp_path / "d", data_dir=tmp_path / "missing").run()
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(FileNotFoundError, match="--data-dir"):
            Demo(model="tiny-random", out=tmp_path / "d").run()
    assert not (tmp_path / "d").exists()


def test_saving_never_deletes_unrelated_files(tiny, tmp_path):
    folder = _saved(tiny, tmp_path / "a")
    (folder / "notes.txt").write_text("mine")
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    with pytest.raises(FileExistsError, match="holds other files \\(notes.txt\\)"):
        ip.save_adapter(model, folder)
    with pytest.raises(FileExistsError, match="notes.txt"):
        ip.export_lora(model, folder, 1.0)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "adapter.safetensors").exists()


def test_generate_and_export_default_to_the_base_model_the_adapter_records(tiny, tmp_path):
    from innerpissa.cli_eval import adapter_base_model

    folder = _saved(tiny, tmp_path / "a")
    assert adapter_base_model(folder, None) == "tiny-random-llama"
    assert adapter_base_model(folder, "smollm2") == "smollm2" and adapter_base_model(None, None) == "smollm2"
    from innerpissa.models import tiny_random_model

    deeper, _ = tiny_random_model(n_layers=8)  # another depth selects other blocks: the error names the base
    with pytest.raises(ValueError, match="trained on 'tiny-random-llama'.*--model"):
        ip.load_adapter(deeper, folder)


def test_the_cli_does_not_fake_an_offline_default():
    """Row 9.3: setting HF_HUB_OFFLINE after huggingface_hub is imported had no effect; the CLI no longer
    pretends to (the Makefile is the one place that sets it)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = ("import os, innerpissa.cli, innerpissa.compare, innerpissa.cli_eval; "
            "print(os.environ.get('HF_HUB_OFFLINE'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_model_folder_errors_name_the_folder(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="notamodel has no config.json"):
        ip.load_model(str(tmp_path / "notamodel"))
    with pytest.raises(FileNotFoundError, match="model folder ./does/not/exist does not exist"):
        ip.load_model("./does/not/exist")


# ================================================================ the second probe (reliability-2026-12-03.md)
# One test per BAD and POOR row (48, 49, 50, the caches, are tested with the eval caches). Row numbers are
# that table's.


def _ctrl_c():
    raise KeyboardInterrupt


def _interrupt_at(monkeypatch, n: int, action=_ctrl_c):
    """Call `action` (default: Ctrl-C) at the n-th training micro-batch; returns the original method."""
    original, calls = Trainer.losses, {"n": 0}

    def losses(self, batch):
        calls["n"] += 1
        if calls["n"] == n and torch.is_grad_enabled():
            action()
        return original(self, batch)

    monkeypatch.setattr(Trainer, "losses", losses)
    return original


# ---------------------------------------------------------------- run folders owned (rows 7, 8, 9, 10)


_HOLD_LOCK = ("import sys, time; from pathlib import Path; from innerpissa.train.runfolder import run_lock\n"
              "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")


def test_a_second_process_cannot_train_into_a_locked_run_folder(tmp_path):
    """Row 7: two `train` into one --out both 'succeeded' and lost one adapter. The folder is locked for the
    whole run; a second process fails at once, naming the holder's pid. The kernel drops the lock when the
    holder dies (SIGKILL), so a killed run never leaves the folder locked."""
    import subprocess
    import sys

    from innerpissa.cli import main

    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"in use by another training run \\(pid {holder.pid}\\)"):
            train(_cfg(out))
        with pytest.raises(SystemExit) as e:
            main(["train", "--preset", "tiny", "--out", str(out), "--overwrite"])
        assert f"pid {holder.pid}" in str(e.value) and "\n" not in str(e.value)
        assert not (out / "adapter").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    res = train(_cfg(out))
    assert res.adapter_path.exists() and not (out / ".innerpissa.lock").exists()


def test_default_run_names_differ_within_one_second(tmp_path, monkeypatch):
    """Row 8: two runs without --out in the same second shared one folder."""
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20261203-120000")
    names = {default_out("honesty", tmp_path).name for _ in range(20)}
    assert len(names) > 15 and all(n.startswith("honesty-20261203-120000-") for n in names)


def test_sigterm_checkpoints_and_exits_like_ctrl_c(tmp_path, monkeypatch):
    """Row 9: SIGTERM killed the run silently without a checkpoint (Ctrl-C wrote one). Now the same path:
    checkpoint, a one-line message saying how to resume, and `--resume` continues to the uninterrupted result."""
    import signal

    from innerpissa.cli import main

    out = tmp_path / "t"
    original = _interrupt_at(monkeypatch, 6, lambda: os.kill(os.getpid(), signal.SIGTERM))

    def unhandled(signum, frame):  # what would happen without train's handler: here a failure, not a dead pytest
        pytest.fail("SIGTERM reached the default handler: training did not catch it")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(SystemExit, match="training interrupted; resume with --resume"):
            main(["train", "--preset", "tiny", "--out", str(out), "--epochs", "3", "--data.n-pairs", "16",
                  "--no-calibrate"])
        assert signal.getsignal(signal.SIGTERM) is unhandled  # installed only while training
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (out / "checkpoint" / "state.pt").exists() and not (out / "adapter").exists()
    monkeypatch.setattr(Trainer, "losses", original)
    res = train(_cfg(out, epochs=3, resume=True))
    assert res.summary["steps"] == 9


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, monkeypatch):
    """Row 10: a run killed while appending to metrics.jsonl left a torn line; --resume failed with a bare
    "Expecting ',' delimiter". The torn last line is dropped with a warning naming the file; a damaged line
    before it is an error naming file and line."""
    out = tmp_path / "m"
    original = _interrupt_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, epochs=3))
    monkeypatch.setattr(Trainer, "losses", original)
    metrics = out / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 3, "epoch": 1, "lr": 0.0')
    with pytest.warns(UserWarning, match=f"{metrics}:\\d+: dropped a torn last line"):
        train(_cfg(out, epochs=3, resume=True))
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert rows[-1]["epoch"] == 2 and len({r["step"] for r in rows if "lr" in r}) == 9
    metrics.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    from innerpissa.train.trainer import _metric_lines

    with pytest.raises(ValueError, match=f"{metrics}:2: not a JSON object line"):
        _metric_lines(metrics)


# ---------------------------------------------------------------- no pickle from disk (row 13)


class _Payload:
    """Unpickling this calls open(marker, 'w'): the file appears iff the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_planted_as_checkpoint_is_refused_and_never_runs(finished_run, tmp_path):
    from innerpissa.cli import main

    run = _copy(finished_run, tmp_path / "r")
    marker = tmp_path / "pwned"
    state = run / "checkpoint" / "state.pt"
    real = torch.load(state, weights_only=True)  # real checkpoints are plain data
    real["state"]["finished"] = _Payload(marker)
    torch.save(real, state)
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny", "--out", str(run), "--resume", "--data.n-pairs", "16", "--no-calibrate"])
    msg = str(e.value)
    assert "holds objects other than tensors and plain data" in msg and str(state) in msg and "\n" not in msg
    assert not marker.exists()
    from innerpissa.train.checkpoint import load_checkpoint

    with pytest.raises(ValueError, match="could run code"):
        load_checkpoint(run / "checkpoint", [], None, None)
    assert not marker.exists()
    torch.load(state, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_generation_caches_are_not_pickles(tmp_path):
    """The generation comparison's cached frames were pandas pickles (code on load); the one score cache of
    every task is JSON data, read back exactly."""
    import pandas as pd

    from innerpissa.eval.task import ScoreCache
    from innerpissa.steering import NoSteering

    df = pd.DataFrame({"c": [-1.0, 1.0], "ids": [[1, 2], []], "continuation": ["a\nb", "é"],
                       "nll": [float("nan"), 1.2345678901234567]})
    cache = ScoreCache(tmp_path, {"task": "test"})
    pd.testing.assert_frame_equal(cache.get(NoSteering(), [0.0], lambda: df), df)
    (path,) = tmp_path.iterdir()
    assert path.suffix == ".json" and json.loads(path.read_text())["columns"] == list(df.columns)
    pd.testing.assert_frame_equal(cache.get(NoSteering(), [0.0], lambda: pytest.fail("recomputed")), df,
                                  check_exact=True)


# ---------------------------------------------------------------- atomic exports (rows 5, 51, 52, 53, 54)


def _steered_model(tiny):
    model, tok = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    with torch.no_grad():
        for p in ip.adapter_parameters(model):
            p.normal_(std=0.1)
    return model, tok


def test_merged_export_refuses_a_run_or_an_adapter_folder(finished_run, tmp_path, tiny):
    """Row 51: `export --merged --out <run folder>` overwrote the run's config.json."""
    from innerpissa.cli import main

    run = _copy(finished_run, tmp_path / "r")
    before = _snapshot(run)
    model, tok = _steered_model(tiny)
    with pytest.raises(FileExistsError, match="holds a training run"):
        ip.export_merged(model, tok, run, 1.0)
    with pytest.raises(FileExistsError, match="holds an adapter"):
        ip.export_merged(model, tok, run / "adapter", 1.0)
    with pytest.raises(FileExistsError, match="inside the adapter folder"):
        ip.export_merged(model, tok, run / "adapter" / "merged", 1.0)
    for out in (run, run / "adapter"):  # the CLI refuses before loading any model
        with pytest.raises(SystemExit, match="holds a"):
            main(["export", "--adapter", str(run / "adapter"), "--merged", "--out", str(out)])
    assert _snapshot(run) == before


def test_merged_export_is_atomic_exact_and_leaves_the_model_as_it_was(tiny, tmp_path, monkeypatch):
    """Row 52: a kill during `export --merged` left half a model.safetensors. The export is built beside the
    target and renamed into place: a failure mid-write keeps the previous export whole. The merged model
    equals the adapter at c, and the steerable model is unchanged afterwards."""
    model, tok = _steered_model(tiny)
    x = torch.randint(0, 500, (2, 9))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "merged"
    ip.export_merged(model, tok, out, 0.7)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    merged, _ = ip.load_model(str(out))
    with ip.steer(model, 0.7), torch.no_grad():
        torch.testing.assert_close(merged(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)
    before = _snapshot(out)

    def half_then_die(self, folder, **kw):
        Path(folder, "model.safetensors").write_bytes(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", half_then_die)
    with pytest.raises(OSError, match="No space"):
        ip.export_merged(model, tok, out, -0.7)
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


_KILL_BETWEEN_RENAMES = """
import os, sys
import innerpissa.fileio as fio
from innerpissa.adapter.io import save_adapter
import innerpissa as ip, torch
model, _ = ip.load_model("tiny-random")
ip.attach(model, ip.AdapterConfig(r=4))
fio.exchange_paths = lambda a, b: False          # the two-rename fallback of non-Linux systems
real = os.replace
def replace(a, b):
    if str(a).endswith(".tmp"):  # the folder: the old one is already aside, the new one not yet in place
        os._exit(9)
    real(a, b)
os.replace = replace
save_adapter(model, sys.argv[1])
"""


def test_a_write_killed_between_two_renames_is_named_and_cleaned(tiny, tmp_path):
    """Row 5: a kill between atomic_folder's two renames left the adapter missing from its path and both
    copies hidden. On Linux the replacement is one atomic exchange (no window). Where it is two renames, a
    reader names the leftovers (which one is the complete new version) and the next write removes them."""
    import subprocess
    import sys

    folder = _saved(tiny, tmp_path / "a")
    r = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_RENAMES, str(folder)], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert not folder.exists()
    with pytest.raises(FileNotFoundError, match="an interrupted write left") as e:
        ip.load_adapter(tiny[0], folder)
    assert re.search(r"\.a\.~[0-9a-f]+-\d+\.\w+\.tmp \(the new version, complete: rename it to a\)", str(e.value))
    assert re.search(r"\.a\.~[0-9a-f]+-\d+\.\w+\.old \(the previous version\)", str(e.value))
    model, _ = tiny
    ip.attach(model, ip.AdapterConfig(r=4))
    with pytest.warns(UserWarning, match="removed 2 leftover"):
        ip.save_adapter(model, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    from innerpissa.fileio import exchange_paths

    b = tmp_path / "b"
    b.mkdir()
    if exchange_paths(folder, b):  # this system swaps folders atomically: the path is never missing
        assert (b / "adapter.safetensors").exists() and not any(folder.iterdir())


def test_a_live_writers_temporary_folder_is_never_removed(tmp_path):
    from innerpissa.fileio import atomic_folder, leftovers

    with atomic_folder(tmp_path / "x") as tmp:
        (tmp / "f").write_text("1")
        assert leftovers(tmp_path / "x") == []  # our own, in flight
    assert (tmp_path / "x" / "f").read_text() == "1"


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_merged_export_respects_the_umask(tiny, tmp_path, mask):
    """Row 54: model.safetensors of a merged export was 0600 under umask 022."""
    model, tok = _steered_model(tiny)
    old = os.umask(mask)
    try:
        ip.export_merged(model, tok, tmp_path / "m", 1.0)
    finally:
        os.umask(old)
    for f in (tmp_path / "m").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o777 & ~mask


def test_exports_far_beyond_the_trained_range_warn(tiny, tmp_path):
    """Row 53: `export --c 1e30` wrote entries of 2e28 without a word. Exports and merges warn as `steer`
    does (|c| beyond twice the trained range), and refuse non-finite coefficients."""
    folder = _saved(tiny, tmp_path / "a")
    for export in (lambda m, t, c: ip.export_lora(m, tmp_path / "lora", c),
                   lambda m, t, c: ip.export_merged(m, t, tmp_path / "merged", c)):
        model, tok = ip.load_model("tiny-random")
        ip.load_adapter(model, folder)
        with pytest.warns(UserWarning, match="more than twice the range"):
            export(model, tok, 1e30)
        with pytest.raises(ValueError, match="finite"):
            export(model, tok, float("inf"))
    model, tok = ip.load_model("tiny-random")
    ip.load_adapter(model, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ip.export_lora(model, tmp_path / "lora", 1.0)


# ---------------------------------------------------------------- threads (row 30)


def _reference_logits(model, x, cs):
    with torch.no_grad():
        out = {}
        for c in cs:
            with ip.steer(model, c):
                out[c] = model(x).logits.clone()
        return out


def test_two_threads_steering_one_model_never_mix_coefficients(tiny):
    """Row 30: two threads each ran 60x `with steer(m, c): m(x)` at c = +1 / -1; 42 of 120 forwards used the
    other thread's c and the model was left at c = +1. Now a steer from a second thread while one is open
    raises SteeringConflict before changing anything: every forward that ran used its own c, the conflicts
    are reported, and the model is at c = 0 when both are done."""
    import threading

    from innerpissa.errors import SteeringConflict

    model, _ = _steered_model(tiny)
    x = torch.randint(0, 500, (1, 6))
    ref = _reference_logits(model, x, (1.0, -1.0, 0.0))
    wrong, ran, conflicts = [], {1.0: 0, -1.0: 0}, {1.0: 0, -1.0: 0}
    start = threading.Barrier(2)

    def work(c):
        start.wait()
        for _ in range(60):
            try:
                with ip.steer(model, c), torch.no_grad():
                    y = model(x).logits
                    if not torch.equal(y, ref[c]):
                        wrong.append(c)
                    ran[c] += 1
            except SteeringConflict:
                conflicts[c] += 1

    threads = [threading.Thread(target=work, args=(c,)) for c in (1.0, -1.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and sum(ran.values()) + sum(conflicts.values()) == 120 and sum(ran.values()) > 0
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref[0.0])


def test_steering_conflict_is_immediate_and_the_contract_is_shared_state(tiny):
    """The contract the server relies on: a model holds one steering state shared by all threads. A second
    thread's steer fails at once (nothing changed); a plain forward on another thread inside the context
    runs steered (generation on a streaming thread); nested steer in one thread is fine; once the first
    context exits, another thread may steer."""
    import threading

    from innerpissa.errors import SteeringConflict

    model, _ = _steered_model(tiny)
    x = torch.randint(0, 500, (1, 6))
    ref = _reference_logits(model, x, (1.0, -1.0, 0.5))
    got = {}

    def other(key, c=None):
        try:
            with torch.no_grad():
                if c is None:
                    got[key] = model(x).logits
                else:
                    with ip.steer(model, c):
                        got[key] = model(x).logits
        except SteeringConflict as e:
            got[key] = e

    with ip.steer(model, 1.0):
        for key, c in (("steer", -1.0), ("plain", None)):
            t = threading.Thread(target=other, args=(key, c))
            t.start()
            t.join()
        with ip.steer(model, 0.5), torch.no_grad():  # nested in the owning thread
            assert torch.equal(model(x).logits, ref[0.5])
        with torch.no_grad():
            assert torch.equal(model(x).logits, ref[1.0])
    assert isinstance(got["steer"], SteeringConflict) and "one thread" in str(got["steer"])
    assert torch.equal(got["plain"], ref[1.0])
    t = threading.Thread(target=other, args=("after", -1.0))
    t.start()
    t.join()
    assert torch.equal(got["after"], ref[-1.0])


def test_steering_conflict_between_asyncio_tasks(tiny):
    """Two asyncio tasks on one thread: the second task's steer conflicts like a second thread's."""
    import asyncio

    from innerpissa.errors import SteeringConflict

    model, _ = _steered_model(tiny)

    async def hold():
        with ip.steer(model, 1.0):
            await asyncio.sleep(0.05)

    async def second():
        await asyncio.sleep(0.01)
        with ip.steer(model, -1.0):
            pass

    async def both():
        return await asyncio.gather(hold(), second(), return_exceptions=True)

    res = asyncio.run(both())
    assert res[0] is None and isinstance(res[1], SteeringConflict)


# ---------------------------------------------------------------- coefficient types (row 27)


def test_steer_rejects_bool_meta_and_complex_coefficients(tiny):
    model, _ = _steered_model(tiny)
    cases = [(torch.tensor([True, False]), TypeError, "real numbers"),
             (torch.ones(2, device="meta"), ValueError, "meta device"),
             (torch.tensor([1 + 1j, 0j]), TypeError, "real numbers"),
             (True, TypeError, "real number"), ("1.0", TypeError, "real number")]
    for c, exc, match in cases:
        with pytest.raises(exc, match=match), ip.steer(model, c):
            pass
    with ip.steer(model, torch.tensor([1, -1])):  # integer tensors are real numbers
        model(torch.randint(0, 500, (2, 4)))


# ---------------------------------------------------------------- adapter files (rows 16, 18, 19, 20, 22)


def _rewrite(folder: Path, tensors: dict | None = None, edit=None, sha: bool = True) -> None:
    """Rewrite a saved adapter's tensors and/or JSON, keeping the sha256 consistent (a deliberate edit)."""
    from safetensors.torch import save_file

    from innerpissa.adapter.io import file_sha256

    if tensors is not None:
        save_file(tensors, str(folder / "adapter.safetensors"))
    meta = json.loads((folder / "adapter_config.json").read_text())
    if sha:
        meta["weights_sha256"] = file_sha256(folder / "adapter.safetensors")
    if edit is not None:
        edit(meta)
    (folder / "adapter_config.json").write_text(json.dumps(meta))


def test_adapter_tensors_of_another_dtype_are_refused(tiny, tmp_path):
    """Row 16: tensors stored as fp16 / int32 (sha updated) loaded silently."""
    from safetensors.torch import load_file

    folder = _saved(tiny, tmp_path / "a")
    tensors = load_file(str(folder / "adapter.safetensors"))
    key = sorted(tensors)[0]
    for dtype in (torch.float16, torch.int32):
        _rewrite(folder, {**tensors, key: tensors[key].to(dtype)})
        with pytest.raises(CorruptAdapterError, match=f"adapter.safetensors: tensor {key} is {dtype}"):
            ip.load_adapter(ip.load_model("tiny-random")[0], folder)


def test_unknown_extra_tensors_are_refused(tiny, tmp_path):
    """Row 18: an extra 4 MB tensor named `../../evil` was ignored."""
    from safetensors.torch import load_file

    folder = _saved(tiny, tmp_path / "a")
    tensors = load_file(str(folder / "adapter.safetensors"))
    _rewrite(folder, {**tensors, "../../evil": torch.zeros(1000)})
    model, _ = ip.load_model("tiny-random")
    with pytest.raises(CorruptAdapterError, match=r"unexpected tensor\(s\) \['../../evil'\]"):
        ip.load_adapter(model, folder)
    assert not ip.adapter_names(model)  # refused before anything was attached


def test_replaced_singular_vectors_are_detected(tiny, tmp_path):
    """Row 19: U, S, V replaced (sha updated) loaded, never checked against W. They must satisfy
    U^T W V = diag(S) for this model's W (checked with strict, on a random probe). A swapped theta is not
    detectable this way (any theta is valid): the sha covers accidents, not a deliberate edit."""
    from safetensors.torch import load_file

    folder = _saved(tiny, tmp_path / "a")
    tensors = load_file(str(folder / "adapter.safetensors"))
    key = sorted(k for k in tensors if k.endswith(".U"))[0]
    other, _ = torch.linalg.qr(torch.randn_like(tensors[key]))
    for t in ({**tensors, key: other.contiguous()},
              {**tensors, key.replace(".U", ".S"): tensors[key.replace(".U", ".S")].flip(0).contiguous()}):
        _rewrite(folder, t)
        with pytest.raises(CorruptAdapterError, match=f"singular vectors of {key[:-2]} are not those"):
            ip.load_adapter(ip.load_model("tiny-random")[0], folder)
    ip.load_adapter(ip.load_model("tiny-random")[0], folder, strict=False)  # the user's explicit choice


def test_a_missing_weights_sha256_is_an_error(tiny, tmp_path):
    """Row 20: with `weights_sha256` deleted a tampered tensor loaded without a word. Every adapter
    save_adapter writes records it, so its absence is an error (saying how to re-add it if you trust it)."""
    folder = _saved(tiny, tmp_path / "a")
    _rewrite(folder, edit=lambda m: m.pop("weights_sha256"))
    with pytest.raises(CorruptAdapterError, match="has no weights_sha256.*sha256sum"):
        ip.load_adapter(ip.load_model("tiny-random")[0], folder)


@pytest.mark.parametrize("field,value,match", [
    ("config.r", "8", r"config: field 'r' is '8' \(str\); expected int"),
    ("config.rotation_blocks", 0, "rotation_blocks must be an integer >= 1"),
    ("config.dtype", "bogus", "field 'dtype' is 'bogus'"),
    ("config.target_modules", None, "field 'target_modules' is None"),
    ("modules", None, "field modules is None"),
    ("modules.0.d_out", "64", r"field modules\[0\].d_out is '64'"),
    ("modules.0.weight_fingerprint", [1.0], r"field modules\[0\].weight_fingerprint"),
    ("kind", 3, "field kind is 3"),
    ("coeff_range", "wide", "field coeff_range"),
    ("weights_sha256", 12, "field weights_sha256"),
    ("config", [], "field config is"),
])
def test_wrong_typed_adapter_json_fields_name_the_file_and_field(tiny, tmp_path, field, value, match):
    """Row 22: r "8", rotation_blocks 0, dtype "bogus", modules null gave raw TypeError/ZeroDivisionError."""
    from innerpissa.cli import one_line

    folder = _saved(tiny, tmp_path / "a")

    def edit(meta):
        *path, last = field.split(".")
        node = meta
        for k in path:
            node = node[int(k)] if k.isdigit() else node[k]
        node[int(last) if last.isdigit() else last] = value

    _rewrite(folder, edit=edit)
    with pytest.raises(CorruptAdapterError, match=match) as e:
        ip.load_adapter(ip.load_model("tiny-random")[0], folder)
    assert str(folder / "adapter_config.json") in str(e.value) and "\n" not in one_line(e.value)


# ---------------------------------------------------------------- pairs files (rows 32, 37, 38)


def _multiline_pairs(n: int) -> list[dict]:
    return [{"positive": f"I am honest, line {i}.\nQ: and then?\n\nSo here is what I think",
             "negative": f"I am a liar, line {i}.\nQ: and then?\n\nSo here is what I think"} for i in range(n)]


def test_csv_with_multiline_cells_trains_the_same_adapter_as_jsonl(tmp_path):
    """Row 37: a CSV with quoted multi-line cells (what csv/pandas write) lost its newlines, and the same pairs
    as CSV and JSONL trained different adapters."""
    import csv

    from safetensors.torch import load_file

    from innerpissa.data.pairs import load_pairs

    rows = _multiline_pairs(16)
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["positive", "negative"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.positive for p in load_pairs(tmp_path / "p.csv")] == [r["positive"] for r in rows]
    trained = {}
    for ext in ("csv", "jsonl"):
        cfg = _cfg(tmp_path / f"run-{ext}", epochs=1)
        cfg.data.pairs_file = tmp_path / f"p.{ext}"
        trained[ext] = load_file(str(train(cfg).adapter_path / "adapter.safetensors"))
    assert trained["csv"].keys() == trained["jsonl"].keys()
    assert all(torch.equal(trained["csv"][k], trained["jsonl"][k]) for k in trained["csv"])


def test_csv_errors_name_the_first_line_of_a_multiline_row(tmp_path):
    from innerpissa.data.pairs import load_pairs

    f = tmp_path / "p.csv"
    f.write_text('positive,negative\n"a\nb","c\nd"\n"same","same"\n')  # the first row spans lines 2-4
    with pytest.raises(ValueError, match=f"{f}: line 5: .*identical"):
        load_pairs(f)


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    """Row 38: U+2028 inside a JSONL string (valid JSON) gave a false 'invalid JSON' (str.splitlines)."""
    from innerpissa.data.pairs import load_pairs

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"positive": "a\u2028b\u0085c", "negative": "d"}, ensure_ascii=False) + "\r\n",
                 encoding="utf-8")
    assert load_pairs(f)[0].positive == "a\u2028b\u0085c"


def test_repeated_rows_and_a_validation_split_equal_to_training_warn(tmp_path):
    """Row 32: 16 identical rows trained with validation = training and no warning."""
    from innerpissa.data.pairs import load_pairs, split_pairs

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(_multiline_pairs(1)[0]) + "\n" * 1 + (json.dumps(_multiline_pairs(1)[0]) + "\n") * 15)
    with pytest.warns(UserWarning, match=f"{f}: 15 of 16 pairs repeat an earlier one \\(e.g. line 2 repeats line 1\\)"):
        pairs = load_pairs(f)
    with pytest.warns(UserWarning, match="2 of 2 validation pairs also appear in the training pairs.*fits itself"):
        split_pairs(pairs, 0.15, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_pairs(load_pairs_distinct(tmp_path), 0.15, 0)


def load_pairs_distinct(tmp_path: Path):
    from innerpissa.data.pairs import load_pairs

    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _multiline_pairs(16)))
    return load_pairs(f)


# ---------------------------------------------------------------- prompts and counts (rows 40, 41)


def test_prompts_longer_than_the_context_are_refused(tiny):
    """Row 40: a 12,000-token prompt on a 512-position model gave garbage without a warning."""
    from innerpissa.eval.choices import choice_ids
    from innerpissa.eval.generation import generate_sweep
    from innerpissa.eval.harness import score_encoded

    model, tok = _steered_model(tiny)
    long = "honest " * 600
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens plus 8 new tokens, more than the model's context "
                                         "of 512 positions"):
        generate_sweep(model, tok, ["hi", long], ip.AdapterSteerer(model), [0.0, 1.0], max_new_tokens=8)
    with pytest.raises(ValueError, match="prompt of row 0 has 600 tokens, more than the model's context"):
        score_encoded(model, [[5] * 600], choice_ids(tok), tok.pad_token_id)
    short = generate_sweep(model, tok, ["hi"], ip.AdapterSteerer(model), [1.0], max_new_tokens=4)
    assert len(short) == 1


def test_negative_max_new_tokens_is_refused_before_loading(tmp_path, monkeypatch):
    """Row 41: `--max-new-tokens -3` gave silently empty output."""
    import innerpissa.models as models
    from innerpissa.cli import main
    from innerpissa.eval.generation import generate_sweep

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    for n in ("-3", "0"):
        with pytest.raises(SystemExit, match=f"--max-new-tokens {n} is out of range"):
            main(["generate", "--adapter", str(tmp_path), "--model", "tiny-random", "--max-new-tokens", n])
    with pytest.raises(ValueError, match="max_new_tokens must be"):
        generate_sweep(None, None, ["a"], ip.NoSteering(), [0.0], max_new_tokens=-3)


# ---------------------------------------------------------------- paths, limits and the cache (rows 43, 44, 46)


def test_out_below_a_file_fails_before_any_model_work(tmp_path, monkeypatch, finished_run):
    """Row 43: `--out` below a regular file failed only after the model loaded and one step ran."""
    import innerpissa.models as models
    from innerpissa.cli import main

    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "sub"
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(RunFolderError, match=f"lies below {tmp_path / 'f'}, which is a file"):
        train(_cfg(out))
    for argv in (["export", "--adapter", str(finished_run / "adapter"), "--out", str(out)],
                 ["export", "--adapter", str(finished_run / "adapter"), "--merged", "--out", str(out)],
                 ["eval", "--model", "tiny-random", "--out", str(out)]):
        with pytest.raises(SystemExit, match=f"{tmp_path / 'f'} is a file, not a folder"):
            main(argv)


def test_a_file_size_limit_is_named_in_the_error(tmp_path):
    """Row 44: hitting the file-size limit at a checkpoint said "basic_ios::clear: iostream error". The old
    checkpoint stays; the message names the file and the limit."""
    import resource

    from innerpissa.fileio import atomic_torch_save

    path = tmp_path / "state.pt"
    atomic_torch_save({"x": torch.zeros(10)}, path)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(OSError, match=f"could not write {path}: the file-size limit of this process \\(100000 "
                                          "bytes"):
            atomic_torch_save({"x": torch.zeros(100_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_an_unwritable_cache_fails_before_converting_naming_the_variable(tmp_path, monkeypatch):
    """Row 46: a read-only INNERPISSA_CACHE failed only after dequantising, and the variable was not named."""
    import transformers

    import innerpissa.models as models

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("INNERPISSA_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("conversion started"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 60)
    with pytest.raises(OSError, match=r"cannot write converted models to .*\$INNERPISSA_CACHE is "):
        models.load_model(str(gguf))


# ---------------------------------------------------------------- model sources (rows 55, 56)


def test_an_unknown_hub_id_without_network_fails_fast(monkeypatch):
    """Row 55: with HF_HUB_OFFLINE unset and no network an unknown id failed after 52 s of retries."""
    import socket
    import time

    import transformers
    from huggingface_hub import constants

    import innerpissa.models as models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(k, raising=False)

    def no_network(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("hub client called"))
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="'someone/no-such-model' is neither a local folder nor in the Hugging Face "
                                      "cache, and huggingface.co cannot be reached"):
        models.load_model("someone/no-such-model")
    assert time.perf_counter() - t0 < 5


def test_gguf_of_random_bytes_or_truncated_gives_a_clear_message(tmp_path, monkeypatch):
    """Row 56: a truncated GGUF said "error: error: unpack_from requires a buffer of ..."."""
    from innerpissa.cli import one_line
    from innerpissa.models import load_model, smollm2_gguf_path

    monkeypatch.setenv("INNERPISSA_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=f"{junk} is not a GGUF file \\(it starts with"):
        load_model(str(junk))
    try:
        real = smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip("no embedded GGUF to truncate")
    with open(real, "rb") as f:
        head = f.read(1000)
    for cut in (24, 1000):
        part = tmp_path / f"cut{cut}.gguf"
        part.write_bytes(head[:cut])
        with pytest.raises(ValueError) as e:
            load_model(str(part))
        msg = one_line(e.value)
        assert f"could not read GGUF file {part}" in msg and "truncated or damaged" in msg
        assert not msg.startswith("error: error")
    assert not any((tmp_path / "cache").glob("gguf-*"))


def test_torch_compile_gives_the_steered_output_at_each_coefficient(tiny):
    """Row 28 (kept POOR, docs/RELIABILITY.md 'Known limits'): a compiled model is correct at every c, but each
    new scalar c recompiles (dynamo guards on the float the c = 0 shortcut and the K(c) cache read)."""
    model, _ = _steered_model(tiny)
    x = torch.randint(0, 500, (2, 7))
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        for c in (0.0, 0.8):
            with ip.steer(model, c):
                torch.testing.assert_close(compiled(input_ids=x).logits, model(input_ids=x).logits)


# ---------------------------------------------------------------- caches know what they cache (issue 20 item 3)


def _gen_task(model, tok, cache: Path, prompts=("Describe a kitchen.", "What is on the radio?")):
    from innerpissa.eval.settings import GenSettings
    from innerpissa.eval.task import GenerationTask

    return GenerationTask(model, tok, list(prompts), _LenScorer(), GenSettings(max_new_tokens=3), cache)


class _LenScorer:
    name = "length"

    def __call__(self, texts):
        import numpy as np

        return np.array([float(len(t)) for t in texts])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other key"])
def test_probe48_a_corrupt_cache_entry_is_recomputed_with_a_warning_naming_it(tiny, tmp_path, damage):
    """Probe 48: a truncated or garbage cache entry (or one holding another sweep's key) is never read as
    scores: it is recomputed, with a warning that names the file, and the result equals the first run's."""
    import pandas as pd

    from innerpissa.steering import NoSteering

    model, tok = tiny
    first = _gen_task(model, tok, tmp_path).base()
    (entry,) = tmp_path.glob("base_*.json")
    text = entry.read_text()
    entry.write_text({"truncated": text[: len(text) // 2], "garbage": "\x00not json at all",
                      "other key": text.replace('"max_new_tokens": 3', '"max_new_tokens": 4')}[damage])
    with pytest.warns(UserWarning, match=f"score cache entry {entry}.*recomputing"):
        again = _gen_task(model, tok, tmp_path).score(NoSteering(), [0.0])
    pd.testing.assert_frame_equal(first, again)
    assert entry.read_text() == text  # rewritten whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(first, _gen_task(model, tok, tmp_path).base())  # now read as it is


def test_probe48_cache_round_trip_is_exact(tiny, tmp_path):
    """A cached frame reads back bit for bit: floats, NaN, ints, bools, strings with newlines, token-id lists."""
    import numpy as np
    import pandas as pd

    from innerpissa.eval.task import frame_from_json, frame_to_json

    df = pd.DataFrame({"x": [0.1, np.nan, 1 / 3], "n": [1, 2, 3], "ok": [True, False, True],
                       "text": ["a\nb", "", "ünï\"code"], "ids": [[1, 2], [], [3]]})
    back = frame_from_json(frame_to_json(df, {"k": 1}), {"k": 1})
    pd.testing.assert_frame_equal(df, back, check_exact=True)
    with pytest.raises(ValueError, match="other settings"):
        frame_from_json(frame_to_json(df, {"k": 1}), {"k": 2})


def _save_tiny(folder: Path, seed: int) -> None:
    from innerpissa.models import tiny_random_model

    model, tok = tiny_random_model(seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_probe49_a_replaced_model_folder_is_scored_again(tmp_path, shared_data):
    """Probe 49: `eval` into the same --out after the model folder was replaced by another model scores the new
    model (the cache key holds the weights' hash), and equals a fresh run of it; the same model is read back."""
    import pandas as pd

    from innerpissa.cli_eval import EvalConfig, eval_main

    def run(out):
        cfg = EvalConfig(model=str(tmp_path / "m"), n_dilemmas=4, out=out, data_dir=shared_data / "daily_dilemmas",
                         n_boot=20, examples=False)
        return pd.read_csv(eval_main(cfg)["rows"])

    _save_tiny(tmp_path / "m", seed=0)
    old = run(tmp_path / "E")
    assert len(list((tmp_path / "E" / "cache").glob("*.json"))) == 1
    _save_tiny(tmp_path / "m", seed=1)
    new = run(tmp_path / "E")
    assert not (new["logp_yes"] == old["logp_yes"]).all()  # not the old model's cached scores
    pd.testing.assert_frame_equal(new, run(tmp_path / "fresh"))
    assert len(list((tmp_path / "E" / "cache").glob("*.json"))) == 2


def test_probe50_compare_retrains_an_adapter_trained_with_other_settings(tmp_path, capsys):
    """Probe 50: `compare` rerun with another --train.lr and --epochs retrains the cached adapter (saying which
    fields changed) instead of reusing it; a rerun with the same settings reuses it untouched."""
    from innerpissa.compare import Compare, run_compare
    from innerpissa.eval.settings import CompareGen

    def compare(lr: float, epochs: int) -> Compare:
        train = preset("tiny")
        train.calibrate, train.lr = False, lr
        return Compare(out=tmp_path / "C", preset="tiny", train=train, task="generation", methods=("innerpissa",),
                       seeds=(0,), n_pairs=12, epochs=epochs, n_boot=20,
                       gen=CompareGen(n_prompts=2, max_new_tokens=3, adapter_coeffs=(-1.0, 0.0, 1.0)))

    run_dir = tmp_path / "C" / "train" / "innerpissa_seed0"
    run_compare(compare(0.01, 1))
    first = (run_dir / "adapter" / "adapter.safetensors").read_bytes()
    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    run_compare(compare(0.01, 1))
    assert (run_dir / "summary.json").stat().st_mtime_ns == stamp  # same settings: reused
    capsys.readouterr()
    paths = run_compare(compare(0.2, 2))
    said = capsys.readouterr().out
    assert "trained with other settings" in said and "lr: 0.01 -> 0.2" in said and "epochs: 1 -> 2" in said
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["fingerprint"]["lr"] == 0.2 and summary["fingerprint"]["epochs"] == 2
    assert summary["epochs_run"] == 2 and (run_dir / "adapter" / "adapter.safetensors").read_bytes() != first
    assert "lr: 0.01 -> 0.2" in paths["summary"].read_text()  # the report's overrides are what was trained
