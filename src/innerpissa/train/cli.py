"""`innerpissa train`: a preset plus any field of `TrainConfig` on the command line.

    innerpissa train --preset smollm2-cpu --out runs/honesty --lr 5e-3 --adapter.r 64
    accelerate launch -m innerpissa.cli train --preset qwen3-4b-gpu --out runs/qwen    # GPUs
"""

from __future__ import annotations

import json
import sys

import tyro

from innerpissa.train.config import PRESETS, TrainConfig, preset


def take_flag(argv: list[str], flag: str, missing: str) -> tuple[str | None, list[str]]:
    """Take `FLAG VALUE` (or `FLAG=VALUE`) out of argv: (the last value or None, the other arguments).
    `missing` is the error when the flag ends argv without a value."""
    value, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            if i + 1 >= len(argv):
                raise SystemExit(missing)
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith(f"{flag}="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return value, rest


def split_preset(argv: list[str]) -> tuple[str, list[str]]:
    """Take `--preset NAME` (or `--preset=NAME`) out of argv; default smollm2-cpu."""
    name, rest = take_flag(argv, "--preset", f"--preset needs a name: one of {', '.join(PRESETS)}")
    name = name or "smollm2-cpu"
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return name, rest


def split_concept(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--concept NAME` (or `--concept=NAME`) out of argv: an alias of `--data.builtin NAME`."""
    return take_flag(argv, "--concept", "--concept needs a name of a built-in persona set, e.g. honesty or sentiment")


def concept_default(name: str, concept: str | None) -> TrainConfig:
    """The preset's config with the built-in concept set (the default out folder is then
    runs/<concept>-<timestamp>)."""
    from innerpissa.data.builtin import builtin_sets

    cfg = preset(name)
    if concept is not None:
        if concept not in builtin_sets():
            raise SystemExit(f"unknown concept {concept!r}; built-in concepts: {', '.join(builtin_sets())}")
        cfg.data.builtin = concept
    return cfg


def train_main(argv: list[str] | None = None) -> None:
    from innerpissa.train.trainer import TrainingDiverged, train

    name, rest = split_preset(list(sys.argv[2:] if argv is None else argv))
    concept, rest = split_concept(rest)
    cfg = tyro.cli(TrainConfig, default=concept_default(name, concept), args=rest, prog="innerpissa train",
                   description=f"Train an InnerPiSSA adapter (preset {name}; presets: {', '.join(PRESETS)}).")
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
