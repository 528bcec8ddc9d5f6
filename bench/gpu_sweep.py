"""Exploration on a GPU: InnerPiSSA variants (one seed each) on all truthfulness-labelled dilemmas plus 128
label-0 ones (sample seed 1). Not a selection on the headline rows: it tells what moves the score at all.

    bash bench/gpu_compare.sh   (sets up the model), then  python3 bench/gpu_sweep.py
"""

import time

import tyro

from innerpissa.compare import Compare, run_compare
from innerpissa.train.config import TrainConfig, preset

WIDE = "--adapter.r 64 --adapter.n-layers 18 --adapter.max-angle 1.0"
VARIANTS = {  # `innerpissa train` options on top of the smollm2-cpu preset
    "default": "",
    "lr1e-2_ep6": "--lr 1e-2 --epochs 6",
    "wide_r64_18blocks_angle1": WIDE,
    "margin3_wcoh10": "--loss.margin 3.0 --loss.w-coh 10.0",
    "raw_loss": "--loss.kind raw",
    "shift_wide_lr1e-2": f"--loss-target shift --lr 1e-2 --epochs 6 {WIDE}",
    "no_coherence_margin3_lr1e-2": "--loss.w-coh 0.0 --loss.w-mono 0.0 --loss.margin 3.0 --lr 1e-2 --epochs 6",
}
for name, ov in VARIANTS.items():
    t = time.time()
    print(f"=== {name} {ov}", flush=True)
    run_compare(Compare(out=f"/tmp/sweep/{name}", methods=("innerpissa",), seeds=(0,), labelled_only=True,
                        n_dilemmas=None, n_neutral=128, sample_seed=1, n_boot=300,
                        adapter_coeffs=(-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
                        train=tyro.cli(TrainConfig, default=preset("smollm2-cpu"), args=ov.split())))
    print(f"=== {name} took {time.time() - t:.0f}s", flush=True)
