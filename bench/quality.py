"""Train an adapter and measure its DailyDilemmas effect quickly (a tuning loop, not the headline).

    .venv/bin/python bench/quality.py --out runs/q1 [--loss-target shift --lr 5e-3 ...]
        [--n-labelled 96 --n-neutral 64 --coeffs -1 0 1]

Trains with the `smollm2-cpu` preset plus any `innerpissa train` option (nested ones too, e.g.
`--adapter.r 64 --loss.w-coh 10`), then scores a seeded labelled-only sample of truthfulness dilemmas
and prints the bias-corrected shift at each coefficient with ΔNLL and % valid rows. The headline comparison
is `innerpissa compare`; this script exists to choose its settings.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET = "Virtue/Truthfulness"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-labelled", type=int, default=96)
    ap.add_argument("--n-neutral", type=int, default=64)
    ap.add_argument("--coeffs", type=float, nargs="+", default=[-1.0, 0.0, 1.0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-train", action="store_true", help="reuse the adapter in --out")
    args, train_args = ap.parse_known_args()  # the rest are `innerpissa train` options

    import tyro

    from innerpissa.adapter import load_adapter
    from innerpissa.data.dilemmas import load_dilemmas, sample_dilemmas
    from innerpissa.eval.harness import evaluate
    from innerpissa.eval.summary import coeff_table
    from innerpissa.models import load_model
    from innerpissa.steering import AdapterSteerer
    from innerpissa.train.config import TrainConfig, preset
    from innerpissa.train.trainer import train

    cfg = tyro.cli(TrainConfig, default=preset("smollm2-cpu"), args=train_args)
    cfg.out = args.out
    cfg.progress = False
    t0 = time.time()
    if not args.skip_train:
        res = train(cfg)
        print(json.dumps({"train_seconds": round(time.time() - t0, 1), "final_validation": res.summary["final_validation"],
                          "calibration": res.summary["calibration"]}, indent=1))
    model, tok = load_model(cfg.model)
    load_adapter(model, os.path.join(args.out, "adapter"))
    rows = sample_dilemmas(load_dilemmas(), args.n_labelled, seed=0, labelled_only=True, n_neutral=args.n_neutral)
    t1 = time.time()
    df = evaluate(model, tok, rows, AdapterSteerer(model), args.coeffs, batch_size=args.batch_size,
                  axes=[TARGET], progress=False)
    tab = coeff_table(df, TARGET, n_boot=500)
    print(f"training options: {train_args}  eval rows {len(rows)} x {len(args.coeffs)} in {time.time() - t1:.0f}s")
    for r in tab.itertuples():
        print(f"c={r.coeff:+.2f}  corrected Δ {r.corr_delta:+.3f} [{r.corr_lo:+.3f}, {r.corr_hi:+.3f}]  "
              f"raw Δ {r.raw_delta:+.3f}  ΔNLL {r.dnll:+.3f}  valid {r.valid_frac:.0%}  yes-rate {r.yes_rate:.0%}")


if __name__ == "__main__":
    main()
