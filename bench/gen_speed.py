"""Generation sweep speed (issue 11 item 3): one batched generate with per-row coefficients vs one generate
per coefficient, on the same prompts, with an InnerPiSSA adapter at random (non-zero) parameters.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/gen_speed.py --model smollm2 --n-prompts 16 --tokens 32
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--coeffs", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from innerpissa.adapter import attach
    from innerpissa.adapter.config import AdapterConfig
    from innerpissa.eval.generation import generate_sweep, load_neutral_prompts
    from innerpissa.models import load_model
    from innerpissa.steering import AdapterSteerer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.model, device=device)
    attach(model, AdapterConfig(r=8))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    prompts = load_neutral_prompts("dev")[: args.n_prompts]
    steerer = AdapterSteerer(model)
    generate_sweep(model, tok, prompts[:2], steerer, [0.0, 1.0], max_new_tokens=2)  # warm-up
    times, outs = {}, {}
    for batched in (True, False):
        t0 = time.perf_counter()
        outs[batched] = generate_sweep(model, tok, prompts, steerer, args.coeffs, args.tokens, batched=batched)
        times[batched] = time.perf_counter() - t0
    same = outs[True]["ids"].tolist() == outs[False]["ids"].tolist()
    print(f"{args.model} on {device}: {len(prompts)} prompts x {len(args.coeffs)} coefficients x {args.tokens} tokens")
    print(f"one batched generate: {times[True]:.2f} s; one generate per coefficient: {times[False]:.2f} s; "
          f"speed-up {times[False] / times[True]:.2f}x; identical tokens: {same}")


if __name__ == "__main__":
    main()
