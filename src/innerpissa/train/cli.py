"""`innerpissa train`: a preset plus any field of `TrainConfig` on the command line.

    innerpissa train --preset smollm2-cpu --out runs/honesty --lr 5e-3 --adapter.r 64
    accelerate launch -m innerpissa.cli train --preset qwen3-4b-gpu --out runs/qwen    # GPUs

tyro reads `--preset` (and `--concept`) first, and the preset's config becomes the defaults of every other
flag, so `--help` shows the preset's values; `compare` and `ablate` read `--preset` the same way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import tyro

from innerpissa.train.config import PRESETS, PresetName, TrainConfig, preset


@dataclass
class Start:
    """Where a training config starts."""

    preset: PresetName = "smollm2-cpu"
    """Training preset: its values are the defaults of every training option."""
    concept: str | None = None
    """Built-in persona set to train on (an alias of --data.builtin; the default out folder is then
    runs/<concept>-<timestamp>)."""

    def config(self) -> TrainConfig:
        """The preset's config with the concept set."""
        from innerpissa.data.builtin import builtin_sets

        cfg = preset(self.preset)
        if self.concept is not None:
            if self.concept not in builtin_sets():
                raise SystemExit(f"unknown concept {self.concept!r}; built-in concepts: {', '.join(builtin_sets())}")
            cfg.data.builtin = self.concept
        return cfg


def read_start(argv: list[str]) -> tuple[Start, list[str]]:
    """`--preset` and `--concept` as tyro parses them, and the other arguments (`--help` among them)."""
    return tyro.cli(Start, args=argv, return_unknown_args=True, add_help=False, prog="innerpissa")


def train_main(argv: list[str] | None = None) -> None:
    from innerpissa.train.trainer import TrainingDiverged, train

    start, rest = read_start(list(sys.argv[2:] if argv is None else argv))
    cfg = tyro.cli(TrainConfig, default=start.config(), args=rest, prog="innerpissa train",
                   description=f"Train an InnerPiSSA adapter (--preset {start.preset}, the defaults shown; "
                   f"presets: {', '.join(PRESETS)}; --concept NAME trains on a built-in persona set).")
    try:
        result = train(cfg)
    except TrainingDiverged as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt as e:
        raise SystemExit(str(e) or "interrupted") from None
    if result.already_finished:
        print(f"the run in {result.out} already finished ({result.summary.get('steps', '?')} steps); nothing to "
              "do. Use --overwrite to train it again, or another --out.")
        return
    s = result.summary
    print(json.dumps({k: s[k] for k in ("train_pairs", "val_pairs", "steps", "train_seconds", "final_validation",
                                        "calibration")}, indent=1))
    print(f"adapter written to {result.adapter_path}")
