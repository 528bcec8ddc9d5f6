"""What `compare` and `ablate` share: the method lists, a run's training config and evaluation task, training
or reusing a trained adapter (retrained when its settings, pairs or base model changed), and the loop that
builds every method for every seed on the same pairs (trained methods through the trainer, baselines fitted
on the pairs and sign-calibrated on the probe).

`Runs` holds the settings both commands have (on top of the evaluation's `SweepSettings`).
"""

from __future__ import annotations

import copy
import json
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import tyro

from innerpissa.adapter import adapter_layers, detach_adapter, load_adapter
from innerpissa.baselines.registry import build_baseline
from innerpissa.baselines.sft import build_sft
from innerpissa.data.config import make_pairs
from innerpissa.errors import InputError
from innerpissa.eval.calibration import calibrate_sign
from innerpissa.eval.settings import GenSettings, SweepSettings
from innerpissa.eval.task import DilemmaTask, GenerationTask, Task, score_with_base  # noqa: F401 (re-exported)
from innerpissa.models import load_model
from innerpissa.steering import AdapterSteerer, Steerer
from innerpissa.train.checkpoint import read_checkpoint_state
from innerpissa.train.config import PresetName, TrainConfig, preset
from innerpissa.train.fingerprint import fingerprint_diff, flatten
from innerpissa.train.trainer import run_identity, train

# baselines whose sign is arbitrary (an eigenvector or a random draw) are calibrated on the probe (a flip
# only on evidence: eval.calibration)
SIGN_AMBIGUOUS = ("pca", "random", "repeng_external")
#: methods without a seed (nothing trained, nothing drawn): run once, with the first seed
NO_SEED = ("prompting", "instruction")
DEFAULT_METHODS = ("innerpissa", "lora", "prompting", "pca", "mean_diff", "random", "sspace")
ALL_METHODS = (*DEFAULT_METHODS, "instruction", "sft", "steering_vectors", "repeng_external")


def trained_kinds() -> tuple[str, ...]:
    """The kinds the trainer accepts (`TrainConfig.method`: innerpissa, lora, and whatever is added there),
    each a method of `compare` and, as `kind:variant`, with any named variant (`train.variants`)."""
    return tuple(typing.get_args(typing.get_type_hints(TrainConfig)["method"]))


def parse_method(spec: str) -> tuple[str, str | None]:
    """`kind` or `kind:variant` -> (kind, variant or None); the kind must be trainable to take a variant."""
    kind, sep, variant = spec.partition(":")
    if not sep:
        return spec, None
    from innerpissa.train.variants import VARIANTS

    if kind not in trained_kinds():
        raise InputError(f"method {spec!r}: only trained kinds take a variant ({', '.join(trained_kinds())}), "
                         f"e.g. innerpissa:{next(iter(VARIANTS))}")
    if variant not in VARIANTS:
        raise InputError(f"method {spec!r}: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return kind, variant


def is_trained(spec: str) -> bool:
    """Whether `spec` (a method name or `kind:variant`) goes through the trainer."""
    return parse_method(spec)[0] in trained_kinds()


@dataclass
class Runs(SweepSettings):
    """What `compare` and `ablate` share: the training runs (preset, settings, seeds, pairs) and the tasks."""

    out: Path = Path("runs")
    """Output folder: train/, cache/, sample.csv and the report."""
    preset: PresetName = "smollm2-cpu"
    """Training preset: the starting point of every trained run (and of the --train.* defaults)."""
    train: Annotated[TrainConfig | None, tyro.conf.AvoidSubcommands] = None
    """Training settings of the trained runs, e.g. --train.loss.w-coh 10 (None: the preset's). Each run's
    method, seed, out folder, device and progress bar are set per run."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (pairs, split and initialisation)."""
    n_pairs: int | None = None
    """Contrastive pairs per seed (train + validation), the same for every run; None: the preset's."""
    epochs: int | None = None
    """Override the epochs of every trained run (for quick runs)."""
    sample_seed: int = 0
    """Seed of the evaluation sample (the same rows for every method and seed)."""
    task: Literal["dilemmas", "generation"] = "dilemmas"
    """`dilemmas`: DailyDilemmas Yes/No log-odds (honesty); `generation`: concept expression in greedy
    continuations of held-out neutral prompts (or your own, --gen.prompts-file)."""
    concept: str | None = None
    """Built-in concept to train on and evaluate (default: honesty for dilemmas, sentiment for generation)."""
    gen: GenSettings = field(default_factory=GenSettings)
    """Generation task settings."""


def train_changes(run: Runs) -> list[str]:
    """The run's training settings that differ from its preset ('name: preset -> run'), for the report."""
    return [] if run.train is None else fingerprint_diff(flatten(preset(run.preset).to_dict()),
                                                         flatten(run.train.to_dict()))


def run_concept(run: Runs) -> str | None:
    """The built-in concept a run trains on: its own, else sentiment for the generation task (None: the
    preset's)."""
    return run.concept or ("sentiment" if run.task == "generation" else None)


def train_config(run: Runs, seed: int, method: str | None = None, name: str | None = None) -> TrainConfig:
    """The run's training settings (else its preset's) with its concept, pair count, epochs, device, `seed`
    and `method` (None: the settings'); its folder is OUT/train/<name or method>_seed<seed>."""
    cfg = copy.deepcopy(run.train) if run.train is not None else preset(run.preset)
    if run_concept(run) is not None:
        cfg.data.builtin = run_concept(run)
    cfg.method = method or cfg.method
    cfg.seed = cfg.adapter.seed = seed
    if run.n_pairs is not None:
        cfg.data.n_pairs = run.n_pairs
    if run.epochs is not None:
        cfg.epochs = run.epochs
    cfg.progress = False
    cfg.device = run.device
    cfg.out = Path(run.out) / "train" / f"{name or cfg.method}_seed{seed}"
    return cfg


def open_task(run: Runs, out: Path, split: str | None = None, data: pd.DataFrame | None = None,
              axes: Sequence[str] = ()) -> Task:
    """The run's evaluation task on its base model (loaded once): the generation task on the prompts of
    `split` (or --gen.prompts-file), or DailyDilemmas rows drawn from `data` (default: all) with `axes`
    reported, drawn and checked before the model loads. Scores are cached under OUT/cache."""
    cfg = train_config(run, run.seeds[0])
    if run.task == "generation":
        run.gen.check()
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=run.torch_device())
        return GenerationTask.load(model, tok, run.gen, split or "test", run_concept(run), out / "cache", run.n_boot)
    rows, axes = run.draw_rows(run.sample_seed, out, axes, data=data)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device=run.torch_device())
    return DilemmaTask(model, tok, rows, axes, run, out / "cache", run.sample_seed)


def _saved_fingerprint(out: Path) -> dict | None:
    """The fingerprint of the run in `out`: its summary's, else its checkpoint's; None if it has neither."""
    summary = out / "summary.json"
    if summary.exists():
        saved = json.loads(summary.read_text(encoding="utf-8")).get("fingerprint")
        if saved is not None:
            return saved
    if (out / "checkpoint" / "state.pt").exists():
        return read_checkpoint_state(out / "checkpoint").fingerprint
    return None


def train_or_load(cfg: TrainConfig, model, tok) -> dict:
    """Train `cfg` on `model` (continuing its checkpoint if there is one), or load the adapter a finished
    run left in cfg.out; returns the run's summary. The adapter is attached to `model` either way. A run in
    cfg.out trained (or started) with other settings, pairs or base model is retrained, saying what changed."""
    out = Path(cfg.out)
    saved = _saved_fingerprint(out)
    if saved is not None:
        diff = fingerprint_diff(saved, run_identity(cfg, model, *make_pairs(cfg.data, cfg.seed, tok)))
        if diff:
            print(f"  {out} was trained with other settings ({'; '.join(diff)}): retraining it", flush=True)
            cfg.resume, cfg.overwrite = False, True
            return train(cfg, model, tok).summary
    if not (out / "summary.json").exists():
        cfg.resume = True  # continue a checkpoint if there is one, else start fresh
        return train(cfg, model, tok).summary
    if (out / "lora.safetensors").exists() and not (out / "adapter").exists():
        raise InputError(f"{out} holds a LoRA(c) in the retired lora.safetensors format; remove {out} to retrain it")
    load_adapter(model, out / "adapter")  # either kind: the saved config says which
    return json.loads((out / "summary.json").read_text())


@dataclass
class Built:
    """One method of one seed, ready to score: the steerer, its coefficients and what to record."""

    method: str
    seed: int
    steerer: Steerer
    coeffs: list[float]
    info: dict = field(default_factory=dict)


def trained_config(run: Runs, seed: int, kind: str, variant: str | None = None) -> TrainConfig:
    """The training settings of a trained row: the run's (`train_config`) for `kind`, with the named `variant`
    applied (`train.variants`) when given, in OUT/train/<kind>-<variant>_seed<seed>. Every row keeps the run's
    pairs (data settings), epochs override, seed, device and its own kind, whatever the variant changes."""
    base = train_config(run, seed, kind, name=f"{kind}-{variant}" if variant else None)
    if variant is None:
        return base
    from innerpissa.train.variants import apply_variant

    cfg = apply_variant(variant, base)
    cfg.data, cfg.out, cfg.method = base.data, base.out, kind
    if run.epochs is not None:
        cfg.epochs = run.epochs
    return cfg


def build_method(run: Runs, method: str, seed: int, model, tok, pairs: Sequence, probe: Callable,
                 act_cache: dict, adapter_coeffs: Sequence[float], baseline_coeffs: Sequence[float] | None = None,
                 vector_coeffs: Mapping[str, Sequence[float]] | None = None) -> Built:
    """Train (or reuse) a trained method (a kind of `trained_kinds`, or `kind:variant`, labelled so in every
    table), or fit a baseline on `pairs` and calibrate its sign on `probe`. A baseline sweeps
    `baseline_coeffs` if given, else `vector_coeffs[method]`, else its own default."""
    kind, variant = parse_method(method)
    if kind in trained_kinds():
        summary = train_or_load(trained_config(run, seed, kind, variant), model, tok)
        info = {"train_seconds": summary.get("train_seconds"), "calibration": summary.get("calibration"),
                "val_ordered_fwd": (summary.get("final_validation") or {}).get("val_ordered_fwd")}
        return Built(method, seed, AdapterSteerer(model, name=method, coeffs=adapter_coeffs), list(adapter_coeffs),
                     info)
    if method == "sft":
        cfg = train_config(run, seed, "lora")
        steerer, sft_info = build_sft(model, tok, pairs, cfg.adapter, system=cfg.data.system, seed=seed,
                                      coeffs=adapter_coeffs)
        return Built(method, seed, steerer, list(adapter_coeffs), {"sft": sft_info})
    kw: dict = {"cache": act_cache}
    if method in ("prompting", "instruction"):
        kw["builtin"] = run_concept(run) or "honesty"
    elif baseline_coeffs is not None:
        kw["coeffs"] = baseline_coeffs
    elif vector_coeffs and method in vector_coeffs:
        kw["coeffs"] = vector_coeffs[method]
    steerer = build_baseline(method, model, tok, pairs, seed=seed, **kw)
    info = {"calibration": calibrate_sign(steerer, probe)} if method in SIGN_AMBIGUOUS else {}
    return Built(method, seed, steerer, sorted(set(steerer.default_coeffs) | {0.0}), info)


def each_method(run: Runs, methods: Sequence[str], model, tok, probe: Callable, adapter_coeffs: Sequence[float],
                baseline_coeffs: Sequence[float] | None = None,
                vector_coeffs: Mapping[str, Sequence[float]] | None = None) -> Iterator[Built]:
    """Every method of every seed of `run`, each on its seed's training pairs (the same for every method;
    prompting has no seed and runs once). After the caller has scored one, its adapter is detached."""
    for seed in run.seeds:
        cfg = train_config(run, seed)
        pairs, _ = make_pairs(cfg.data, cfg.seed, tok)
        act_cache: dict = {}
        for method in methods:
            if method in NO_SEED and seed != run.seeds[0]:
                continue  # no training, no seed
            t0 = time.time()
            yield build_method(run, method, seed, model, tok, pairs, probe, act_cache, adapter_coeffs,
                               baseline_coeffs, vector_coeffs)
            if adapter_layers(model):
                detach_adapter(model)
            print(f"  seed {seed} {method:10s} done in {time.time() - t0:.0f}s", flush=True)
