"""The reliability promises (docs/RELIABILITY.md), one test per BAD row of the 2026-11-26 probe at least:
run folders never clobbered, checked resume, divergence caught anywhere, adapter folders safe as a unit,
umask-respecting files, one-line CLI errors, and bad numbers refused before anything is written."""

from __future__ import annotations

import json
import os
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
