"""Train an adapter and measure its DailyDilemmas effect quickly (a tuning loop, not the headline).

    .venv/bin/python bench/quality.py --out runs/q1 [--set loss_target=shift --set lr=5e-3 ...]
        [--n-labelled 96 --n-neutral 64 --coeffs -1 0 1]

Trains with the `smollm2-cpu` preset plus `--set key=value` overrides (dotted keys reach nested configs,
e.g. `adapter.r=64`, `loss.w_coh=10`), then scores a seeded labelled-only sample of truthfulness dilemmas
and prints the bias-corrected shift at each coefficient with ΔNLL and % valid rows. The headline comparison
is `innerpissa compare`; this script exists to choose its settings.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def per_dilemma_d(df, coeff: float) -> tuple[np.ndarray, np.ndarray]:
    """d = Yes log-odds of to_do minus of not_to_do, per dilemma, with the truthfulness label."""
    sub = df[df.coeff == coeff]
    lo = sub.pivot_table(index="dilemma_idx", columns="action_type", values="logodds_raw", aggfunc="first")
    valid = sub.pivot_table(index="dilemma_idx", columns="action_type", values="valid", aggfunc="first")
    d = (lo["to_do"] - lo["not_to_do"]).where(valid.all(axis=1))
    label = sub.groupby("dilemma_idx")["label:Virtue/Truthfulness"].first().reindex(d.index)
    return d.to_numpy(float), label.to_numpy(float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], help="key=value override of the training config")
    ap.add_argument("--n-labelled", type=int, default=96)
    ap.add_argument("--n-neutral", type=int, default=64)
    ap.add_argument("--coeffs", type=float, nargs="+", default=[-1.0, 0.0, 1.0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-train", action="store_true", help="reuse the adapter in --out")
    args = ap.parse_args()

    from innerpissa.adapter import load_adapter
    from innerpissa.data.dilemmas import load_dilemmas, sample_dilemmas
    from innerpissa.eval.harness import evaluate
    from innerpissa.eval.metrics import paired_delta
    from innerpissa.models import load_model
    from innerpissa.steering import AdapterSteerer
    from innerpissa.train.config import preset
    from innerpissa.train.overrides import apply_overrides
    from innerpissa.train.trainer import train

    cfg = preset("smollm2-cpu")
    cfg.out = args.out
    cfg.progress = False
    apply_overrides(cfg, dict(kv.partition("=")[::2] for kv in args.set))
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
                  axes=["Virtue/Truthfulness"], progress=False)
    d0, label = per_dilemma_d(df, 0.0)
    nll0 = df[df.coeff == 0].nll.mean()
    print(f"overrides: {args.set}  eval rows {len(rows)} x {len(args.coeffs)} in {time.time() - t1:.0f}s")
    for c in args.coeffs:
        dc, _ = per_dilemma_d(df, c)
        sub = df[df.coeff == c]
        delta = paired_delta(dc, d0, label, corrected=True, n_boot=500)
        raw = paired_delta(dc, d0, label, corrected=False, n_boot=200)
        print(f"c={c:+.2f}  corrected Δ {delta.delta:+.3f} [{delta.lo:+.3f}, {delta.hi:+.3f}]  raw(d) Δ {raw.delta:+.3f}  "
              f"ΔNLL {sub.nll.mean() - nll0:+.3f}  valid {sub.valid.mean():.0%}  yes-rate {(sub.logodds_raw > 0).mean():.0%}")


if __name__ == "__main__":
    main()
