"""Training configuration: one dataclass tree (adapter, data, direction, loss, optimisation), with presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from innerpissa.adapter.config import AdapterConfig
from innerpissa.data.config import DataConfig
from innerpissa.train.losses import LossConfig
from innerpissa.train.outputs import Objective, OutputConfig


@dataclass
class DirectionConfig:
    """Where the frozen preference direction is read (METHOD section 4)."""

    depth: float = 0.8
    """Loss layer as a fraction of depth."""
    module: str = "mlp.up_proj"
    """Module inside that block whose input (basis V) or output (basis U) is read; '' for the block output."""
    where: Literal["input", "output"] = "input"
    """Read the module's input or output."""
    basis: Literal["V", "U", "raw"] = "V"
    """Project into the module's input singular vectors V, output U, or raw coordinates."""
    basis_rank: int | None = None
    """Keep only the top-k basis vectors (None: all)."""
    method: Literal["mean", "pca", "pca_aligned", "per_sample"] = "mean"
    """Direction from the paired differences: unit mean, first PCA component, best-aligned PCA, per pair."""
    n_tokens: int = 4
    """Last N real tokens (all in the shared suffix) whose states are compared."""
    dims: int | None = 64
    """Truncate the direction to this many basis coordinates, chosen as the author's `adapter_dims`: half by
    the variance of the S-normalised positive-prompt coordinates, half by the negative ones' (so the basis
    matters; a full square basis is only a rotation of the raw mean difference). None: all coordinates (v0)."""
    dims_rule: Literal["variance", "difference"] = "variance"
    """How the `dims` coordinates are chosen: the author's S-normalised `variance` rule, or the largest |mean
    difference| (keeps the most of the direction's norm; an ablation of the truncation)."""


@dataclass
class TrainConfig:
    """Everything `innerpissa train` needs."""

    model: str = "smollm2"
    """Base model: Hugging Face id, local folder, 'smollm2' (embedded) or 'tiny-random'."""
    out: Path | None = None
    """Output folder: adapter/, checkpoint/, metrics.jsonl, summary.json (default: a new
    runs/<concept>-<timestamp>). A folder that already holds a run needs --resume or --overwrite."""
    method: Literal["innerpissa", "lora", "vector"] = "innerpissa"
    """What to train (one objective, the same modules of the same blocks): the InnerPiSSA adapter, a LoRA scaled
    by c (the LoRA(c) baseline), or a steering vector scaled by c on those modules' outputs (`adapter/vector.py`)."""
    objective: Objective = "inner"
    """What training optimises: `inner`, the seed's loss on hidden states of the persona pairs (METHOD section 5,
    settings in `loss.*`, `loss_target`, `direction.*`); or an objective on the model's own completions from a
    persona-free input (METHOD section 12, settings in `outputs.*`): `pref` (reference-free preference: y+ at
    c = +1, y- at c = -1), `dpo` (the same against the base model), `sft` (imitate the chosen completion),
    `distill` (a capacity check: carry the mean-difference vector's effect on the same persona-free rows)."""
    outputs: OutputConfig = field(default_factory=OutputConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(scale_to_ref=True, beta=1.0))
    """Loss terms. Separations are measured in units of the mean reference separation: at the default loss
    point (up_proj input) s_0 is ~0.3 on SmolLM2, where METHOD's unscaled margin of 1 would be meaningless."""
    loss_target: Literal["separation", "shift", "shift_moved"] = "separation"
    """What the projection term moves along the direction: the pos - neg `separation` (METHOD section 5), the
    `shift` of both prompts' states (c = +1 moves the dishonest prompt toward honest, c = -1 the reverse), or
    `shift_moved`: that shift minus its c = 0 value, so the loss sees how far c moved the states from where
    they were (the `raw` loss then starts with its full gradient, not one damped by the states' offset)."""
    loss_inputs: Literal["persona", "neutral"] = "persona"
    """Which rows the inner loss reads: each pair's two persona prompts (METHOD section 5), or `neutral`: the
    pair's persona-free version, the neutral user turn `outputs.user` and the pair's suffix, as the same text on
    both rows (issue 17 C3: the loss acts on the kind of input the adapter is judged on). The direction and the
    loss's unit still come from the persona pairs. `neutral` needs `loss_target` shift or shift_moved (the
    separation of two equal rows is always 0)."""
    epochs: int = 3
    """Passes over the training pairs."""
    batch_size: int = 8
    """Pairs per micro-batch (each pair is two rows, run at c = +1 and c = -1)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 3e-3
    """Peak learning rate of the one-cycle schedule."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup: float = 0.1
    """Fraction of steps spent warming up."""
    clip: float = 1.0
    """Gradient norm clipping (<= 0 disables)."""
    patience: int = 0
    """Early stopping: epochs without validation improvement before stopping (0: never stop early)."""
    batch_pm: bool = True
    """Run c = -1 and c = +1 in one batched forward (per-example coefficients) instead of two (with the shared
    prefix, batched is 0.94x two forwards on 2 CPU cores too: docs/RESULTS.md)."""
    frozen_prefix: bool = True
    """Run the blocks below the first adapted block once per batch, not once per coefficient (train/forward.py)."""
    shared_prefix: bool = True
    """Run the tokens every row of a batch starts with (template, system prompt, instruction up to the persona)
    once per coefficient into a KV cache, and only each row's remainder per row (train/forward.py)."""
    cache_reference: bool = True
    """Cache the c = 0 reference per pair (it is the base model); off only to measure."""
    calibrate: bool = True
    """After training, check the sign on the built-in probe (and fix it as `calibrate_flip` says)."""
    calibrate_flip: Literal["significant", "never", "always"] = "significant"
    """When calibration flips the sign: `significant` only if probe(+1) - probe(-1) has a bootstrap CI below
    0 and the probe itself responds to persona prompting (CI above 0); `never`: report only; `always` (v0):
    whenever probe(+1) < probe(-1), noise or not."""
    seed: int = 0
    """Seed for data order, split and adapter initialisation."""
    device: str | None = None
    """Device (default: accelerate's choice)."""
    dtype: str = "float32"
    """Model dtype."""
    resume: bool = False
    """Continue from out/checkpoint if it exists (the run's settings must match the checkpoint's)."""
    overwrite: bool = False
    """Replace a run already in --out (its files are removed once the first step of the new run succeeds)."""
    wandb: str | None = None
    """Log to this Weights & Biases project (needs `pip install wandb`)."""
    progress: bool = True
    """Show a tqdm bar with the live loss terms."""

    def to_dict(self) -> dict:
        def conv(x):
            if dataclasses.is_dataclass(x):
                return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
            if isinstance(x, Path):
                return str(x)
            if isinstance(x, tuple | list):
                return [conv(v) for v in x]
            return x

        return conv(self)


def preset(name: str) -> TrainConfig:
    """Named starting points; every field can still be overridden on the command line."""
    if name == "tiny":  # seconds, for tests
        return TrainConfig(model="tiny-random", adapter=AdapterConfig(r=8), epochs=2, batch_size=4,
                           data=DataConfig(n_pairs=24, val_fraction=0.25), direction=DirectionConfig(n_tokens=2),
                           calibrate=True, progress=False, lr=1e-2)
    if name == "smollm2-cpu":  # the faithful method on the embedded model, budget sized for 2 CPU cores
        # Measured 2026-11-26 (1 thread, loaded cores; CPU s per micro-batch of 8 pairs): r 32 9.2, r 128 10.3,
        # r 256 13.8. Scaled by the idle-machine r 32 figure (6.4 s, docs/RESULTS.md) r 128 is ~7 s, so
        # 5 epochs x 43 micro-batches is ~30 min: 110 steps of 16 pairs, sum of lr ~0.36 (v0: 66 steps, 0.10).
        # Measured 2026-11-27 with the shared-prefix forward: 783 s for the 110 steps (docs/RESULTS.md, where
        # this full budget scores no better than the r 64 / 96-pair CPU budget on the dev prompts).
        return TrainConfig(model="smollm2", adapter=AdapterConfig(r=128, n_layers=8, select="data"),
                           data=DataConfig(n_pairs=400), epochs=5, batch_size=8, grad_accum=2, patience=3,
                           lr=6e-3, warmup=0.3, weight_decay=1e-5,
                           loss=LossConfig(scale_to_ref=True, beta=1.0, kind="raw", w_mono=100.0, w_coh=40.0))
    if name == "smollm2-cpu-pref":  # the output objective chosen on the dev prompts (docs/RESULTS.md, issue 17)
        # smollm2-cpu trained on its own guided completions from a persona-free input (METHOD section 12):
        # preference plus the chosen completion's NLL, top-r directions, at the CPU budget of the sentiment
        # comparison (96 pairs, 2 epochs, r 64: ~100-200 s per run on 2 cores); exactly what was measured
        cfg = preset("smollm2-cpu")
        cfg.adapter.r, cfg.adapter.select = 64, "top"
        cfg.data.n_pairs, cfg.epochs, cfg.grad_accum, cfg.patience = 96, 2, 1, 0
        cfg.objective, cfg.outputs = "pref", OutputConfig(w_nll=1.0, guidance=2.0)
        return cfg
    if name == "smollm2-cpu-v0":  # the first default, kept for the ablation (variant `default-v0`)
        return v0_method(v0_budget(TrainConfig(model="smollm2")))
    if name == "qwen3-4b-gpu":  # the author's best-known run (his HEAD defaults, Qwen3-4B-Instruct-2507)
        return TrainConfig(model="Qwen/Qwen3-4B-Instruct-2507", dtype="bfloat16",
                           adapter=AdapterConfig(r=256, n_layers=8, svd="randomized", select="data"),
                           data=DataConfig(n_pairs=800), epochs=15, patience=4, batch_size=8, grad_accum=4,
                           lr=6e-3, warmup=0.3, weight_decay=1e-5,
                           loss=LossConfig(scale_to_ref=True, beta=1.0, kind="raw", w_mono=100.0, w_coh=40.0))
    raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")


def v0_method(cfg: TrainConfig) -> TrainConfig:
    """Items 1-4 of issue 8 switched off (the method as first implemented); budget untouched."""
    cfg.loss.mask_tokens = 0
    cfg.loss.coh_rows = "both"
    cfg.loss.mono_ordering = "batch"
    cfg.adapter.select = "top"
    cfg.direction.dims = None
    cfg.calibrate_flip = "always"
    return cfg


def v0_budget(cfg: TrainConfig) -> TrainConfig:
    """The first `smollm2-cpu` budget and loss: r 32 on 8 blocks, 200 pairs, 3 epochs of 8 pairs at lr 3e-3
    (10 % warm-up, no decay, no early stop), logsigmoid projection (beta 1, margin 1, scaled), w_mono 10."""
    cfg.adapter.r, cfg.adapter.n_layers, cfg.adapter.rotation_blocks = 32, 8, 1
    cfg.data.n_pairs = 200
    cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.patience = 3, 8, 1, 0
    cfg.lr, cfg.warmup, cfg.weight_decay = 3e-3, 0.1, 0.0
    cfg.loss = LossConfig(scale_to_ref=True, beta=1.0, kind="logsigmoid", w_mono=10.0, w_coh=40.0)
    cfg.loss_target = "separation"
    return cfg


PresetName = Literal["tiny", "smollm2-cpu", "smollm2-cpu-pref", "smollm2-cpu-v0", "qwen3-4b-gpu"]
PRESETS: tuple[str, ...] = get_args(PresetName)
