"""Evaluation speed: the DailyDilemmas harness vs a bare batched forward over the same tokenized rows.

Prints, for each batch size, rows/s of
- `bare`:    `model(input_ids, attention_mask, position_ids)` keeping its default full-sequence logits
             (what a plain evaluation script runs; its logits already cover every position);
- `floor`:   the same forward with `logits_to_keep=1` (no prompt NLL possible: the cheapest forward);
- `harness`: `score_batch` (Yes/No log-odds, choice mass, prompt NLL from the same forward);
and the ratios harness/bare and harness/floor, plus the harness without NLL (`with_nll=False`) vs floor.
All four run interleaved on each batch and each batch keeps its best of `--repeats` (the machine's cores
may be shared). Then it times a full sweep of `--n-rows` rows (default all 2720) at c = 0 through
`evaluate`, extrapolating to 2720 rows when fewer were run (and saying so), and prints the base model's
fraction of valid rows, its Yes rate and the median prompt length.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_speed.py [--model smollm2] [--n-rows 2720]

`--sweep-dilemmas N` (default 16; 0 skips) adds the coefficient-sweep table: an adapter of the
`smollm2-cpu` preset is attached and a 5-coefficient sweep over both rows of N dilemmas is timed with
shared-prefix scoring, frozen-prefix reuse and all coefficients in one pass each on and off, against a bare batched forward with full
logits over the same rows (rows/s counts one row per coefficient). Arms are interleaved within each repeat
and medians reported; the max abs difference of every arm's scores from the plain sweep is printed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from innerpissa.data.dilemmas import load_dilemmas, sample_dilemmas
from innerpissa.eval.choices import choice_ids
from innerpissa.eval.harness import (
    DEFAULT_SYSTEM,
    encode_prompts,
    evaluate,
    length_batches,
    pad_left,
    score_batch,
    score_encoded,
)
from innerpissa.models import load_model
from innerpissa.steering import NoSteering

ALL_ROWS = 2720


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ratio_table(model, tok, encoded, batch_sizes: list[int], repeats: int) -> dict[int, dict[str, float]]:
    """rows/s of bare, floor and harness on identical left-padded, length-sorted batches.

    They are interleaved batch by batch and each batch keeps its fastest of `repeats` timings, so a
    neighbour's load on shared cores hits all of them alike instead of whichever ran during the spike.
    """
    choices = choice_ids(tok)
    pad = tok.pad_token_id
    runs = {
        "bare": lambda b: model(input_ids=b[0], attention_mask=b[1], position_ids=b[2], use_cache=False),
        "floor": lambda b: model(input_ids=b[0], attention_mask=b[1], position_ids=b[2], use_cache=False,
                                 logits_to_keep=1),
        "harness": lambda b: score_batch(model, *b, choices),
        "harness_no_nll": lambda b: score_batch(model, *b, choices, with_nll=False),
    }
    score_encoded(model, encoded[:4], choices, pad, 4)  # warm-up
    n = len(encoded)
    print(f"\nthroughput over {n} rows (per batch: best of {repeats}, methods interleaved)")
    print(f"{'batch':>5} {'bare rows/s':>12} {'floor rows/s':>13} {'harness rows/s':>15} {'harness/bare':>13} "
          f"{'harness/floor':>14} {'no-NLL harness/floor':>21}")
    out = {}
    for bs in batch_sizes:
        total = dict.fromkeys(runs, 0.0)
        for batch in length_batches([len(e) for e in encoded], bs):
            padded = pad_left([encoded[i] for i in batch], pad)
            best = dict.fromkeys(runs, float("inf"))
            with torch.no_grad():
                for _ in range(repeats):
                    for k, fn in runs.items():
                        best[k] = min(best[k], _timed(lambda fn=fn, b=padded: fn(b)))
            for k in runs:
                total[k] += best[k]
        r = {k: n / v for k, v in total.items()}
        out[bs] = r
        print(f"{bs:>5} {r['bare']:>12.2f} {r['floor']:>13.2f} {r['harness']:>15.2f} "
              f"{r['harness'] / r['bare']:>13.3f} {r['harness'] / r['floor']:>14.3f} "
              f"{r['harness_no_nll'] / r['floor']:>21.3f}")
    return out


def full_sweep(model, tok, rows, batch_size: int) -> None:
    t0 = time.perf_counter()
    res = evaluate(model, tok, rows, NoSteering(), coeffs=[0.0], batch_size=batch_size, axes=[], progress=True)
    secs = time.perf_counter() - t0
    n = len(res)
    valid = res["valid"].to_numpy()
    yes = (res.loc[valid, "logodds"] > 0).mean()
    print(f"\nfull sweep at c=0, batch {batch_size}: {n} rows in {secs:.1f} s = {n / secs:.2f} rows/s")
    if n < ALL_ROWS:
        print(f"  EXTRAPOLATED to all {ALL_ROWS} rows: {ALL_ROWS * secs / n / 60:.1f} min "
              f"(256 dilemmas x 5 coefficients: {512 * 5 * secs / n / 60:.1f} min)")
    else:
        print(f"  all {ALL_ROWS} rows: {secs / 60:.1f} min (256 dilemmas x 5 coefficients, scaled: "
              f"{512 * 5 * secs / n / 60:.1f} min)")
    print(f"  median prompt tokens {int(np.median(res['n_tokens'] + 1))}; valid rows (mass >= 0.5) {valid.mean():.1%}; "
          f"mean choice mass {res['mass'].mean():.3f}; Yes rate among valid rows {yes:.1%}")


def sweep_table(model, tok, rows, batch_size: int, repeats: int, coeffs=(-1.0, -0.5, 0.0, 0.5, 1.0)) -> dict:
    """Median seconds of each sweep arm and of the bare forward over the same rows, and their rows/s."""
    import statistics

    from innerpissa.adapter import attach
    from innerpissa.eval.sweep import SweepStats, score_sweep
    from innerpissa.split import first_adapted_block
    from innerpissa.steering import AdapterSteerer
    from innerpissa.train.config import preset

    attach(model, preset("smollm2-cpu").adapter)
    with torch.no_grad():  # a non-trivial adapter, so steered and base differ
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    steerer = AdapterSteerer(model)
    encoded = encode_prompts(tok, rows, DEFAULT_SYSTEM)
    pad = tok.pad_token_id
    batches = [pad_left([encoded[i] for i in b], pad) for b in length_batches([len(e) for e in encoded], batch_size)]

    def bare() -> None:
        with torch.no_grad():
            for ids, mask, pos in batches:
                model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

    arms = {"bare": (bare, None)}
    results = {}
    on = {False: "off", True: "on"}
    for sp, fp, bc in ((False, False, False), (True, False, False), (False, True, False), (False, False, True),
                       (False, True, True), (True, True, True)):
        name = f"sweep shared={on[sp]} frozen={on[fp]} one-pass={on[bc]}"

        def fn(sp=sp, fp=fp, bc=bc, name=name) -> None:
            results[name] = evaluate(model, tok, rows, steerer, coeffs=list(coeffs), batch_size=batch_size,
                                     axes=[], progress=False, shared_prefix=sp, frozen_prefix=fp, batch_coeffs=bc)
        arms[name] = (fn, (sp, fp, bc))
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for k, (fn, _) in arms.items():
            times[k].append(_timed(fn))
    n = len(rows)
    med = {k: statistics.median(v) for k, v in times.items()}
    lengths = [len(e) for e in encoded]
    print(f"\ncoefficient sweep: {n} rows ({n // 2} dilemmas, median {int(np.median(lengths))} tokens), "
          f"{len(coeffs)} coefficients, batch {batch_size}, first adapted block {first_adapted_block(model)} of "
          f"{model.config.num_hidden_layers}; median of {repeats} interleaved repeats")
    base = results["sweep shared=off frozen=off one-pass=off"]
    print(f"{'arm':45s} {'s':>8s} {'rows/s':>8s} {'x bare':>7s} {'max|diff|':>10s}")
    for k in arms:
        rps = (n if k == "bare" else n * len(coeffs)) / med[k]
        diff = "" if k == "bare" else f"{max(float(np.abs(results[k][c] - base[c]).max()) for c in ('logp_yes', 'logp_no', 'nll')):.2e}"
        print(f"{k:45s} {med[k]:8.2f} {rps:8.2f} {rps / (n / med['bare']):7.2f} {diff:>10s}")
    st = SweepStats()
    score_sweep(model, encoded, choice_ids(tok), pad, [0.0], steerer.at, first_adapted_block(model),
                rows["dilemma_idx"].tolist(), batch_size=batch_size, stats=st)
    print(f"peak cached states + keys/values per batch (shared+frozen, one coefficient): {st.peak_bytes / 2**20:.1f} MiB")
    st = SweepStats()
    score_sweep(model, encoded, choice_ids(tok), pad, list(coeffs), steerer.at, first_adapted_block(model),
                rows["dilemma_idx"].tolist(), batch_size=batch_size, stats=st, at_many=steerer.at)
    print(f"peak cached states + keys/values per batch (all on, {len(coeffs)} coefficients in one pass): "
          f"{st.peak_bytes / 2**20:.1f} MiB")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-rows", type=int, default=ALL_ROWS, help="rows of the full sweep (extrapolated if < 2720; 0 skips it)")
    ap.add_argument("--ratio-rows", type=int, default=48, help="rows for the harness-vs-bare ratio")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--sweep-batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--sweep-dilemmas", type=int, default=16, help="dilemmas of the sweep table (0 skips it)")
    ap.add_argument("--sweep-repeats", type=int, default=3)
    ap.add_argument("--skip-ratio", action="store_true", help="skip the harness-vs-bare table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start")
    model, tok = load_model(args.model)
    data = load_dilemmas()
    rows = sample_dilemmas(data, None, seed=args.seed)  # a random order of all dilemmas
    encoded = encode_prompts(tok, rows.iloc[: args.ratio_rows], DEFAULT_SYSTEM)
    if not args.skip_ratio:
        ratio_table(model, tok, encoded, args.batch_sizes, args.repeats)
    if args.n_rows > 0:
        full_sweep(model, tok, rows.iloc[: args.n_rows], args.sweep_batch_size)
    if args.sweep_dilemmas > 0:  # last: it attaches an adapter to the model
        both = sample_dilemmas(data, args.sweep_dilemmas, seed=args.seed)
        sweep_table(model, tok, both, args.sweep_batch_size, args.sweep_repeats)


if __name__ == "__main__":
    main()
