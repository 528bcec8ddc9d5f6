"""Generation sweep speed (issue 11 item 3): the sweep decoder vs one batched `generate` with per-row
coefficients vs one `generate` per coefficient, on the same prompts, with an InnerPiSSA adapter at random
(non-zero) parameters on the default layers.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/gen_speed.py --model smollm2 --n-prompts 8 --tokens 16

Arms (median of --repeats interleaved runs):
- `sweep`: `generate_sweep` (the default): eval/decode.py, the chat header and each prompt's tokens below the
  first adapted block computed once, then one decode of every (prompt, c) row;
- `one_generate`: every row in one Hugging Face `generate` with per-row coefficients (the default before);
- `per_coefficient`: one `generate` per coefficient (what a user without per-row steering runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--coeffs", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    ap.add_argument("--adapter", default=None, help="a trained adapter folder (default: random r 8 adapter)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from innerpissa.adapter import attach
    from innerpissa.adapter.config import AdapterConfig
    from innerpissa.data.chat import DEFAULT_SYSTEM, chat_ids
    from innerpissa.eval.generation import (
        generate_ids,
        generate_sweep,
        load_neutral_prompts,
        per_row_state,
    )
    from innerpissa.models import load_model
    from innerpissa.split import first_adapted_block
    from innerpissa.steering import AdapterSteerer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.model, device=device)
    if args.adapter:
        from innerpissa.adapter import load_adapter

        load_adapter(model, args.adapter)
    else:
        attach(model, AdapterConfig(r=8))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    prompts = load_neutral_prompts("dev")[: args.n_prompts]
    steerer = AdapterSteerer(model)
    rows = [(i, c) for c in args.coeffs for i in range(len(prompts))]

    def sweep():
        return generate_sweep(model, tok, prompts, steerer, args.coeffs, args.tokens)["ids"].tolist()

    def one_generate():
        enc = [chat_ids(tok, prompts[i], DEFAULT_SYSTEM) for i, _ in rows]
        with per_row_state(steerer, torch.tensor([c for _, c in rows])):
            return generate_ids(model, tok, enc, args.tokens)

    def per_coefficient():
        return generate_sweep(model, tok, prompts, steerer, args.coeffs, args.tokens, batched=False)["ids"].tolist()

    arms = {"sweep": sweep, "one_generate": one_generate, "per_coefficient": per_coefficient}
    generate_sweep(model, tok, prompts[:2], steerer, [0.0, 1.0], max_new_tokens=2)  # warm-up
    times: dict[str, list[float]] = {a: [] for a in arms}
    outs = {}
    for _ in range(args.repeats):
        for a, fn in arms.items():
            t0 = time.perf_counter()
            outs[a] = fn()
            times[a].append(time.perf_counter() - t0)
    med = {a: statistics.median(v) for a, v in times.items()}
    enc = [chat_ids(tok, p, DEFAULT_SYSTEM) for p in prompts]
    print(f"{args.model} on {device}, {torch.get_num_threads()} threads: {len(prompts)} prompts (median "
          f"{statistics.median(len(e) for e in enc)} tokens) x {len(args.coeffs)} coefficients x {args.tokens} "
          f"new tokens; adapter from block {first_adapted_block(model)} of {model.config.num_hidden_layers}")
    for a in arms:
        print(f"{a:16s} {med[a]:7.2f} s   speed-up vs per_coefficient {med['per_coefficient'] / med[a]:.2f}x   "
              f"identical tokens: {outs[a] == outs['per_coefficient']}")


if __name__ == "__main__":
    main()
