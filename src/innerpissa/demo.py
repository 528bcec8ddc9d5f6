"""`make demo`: the whole workflow on the embedded model, small enough for 2 CPU cores."""

from __future__ import annotations

import time

import torch


def run_demo(args) -> None:
    from innerpissa.adapter import AdapterConfig, adapter_parameters, attach
    from innerpissa.cli import DEMO_PROMPTS, generate_text
    from innerpissa.models import load_model

    t0 = time.time()
    model, tok = load_model(args.model)
    print(f"loaded {args.model} in {time.time() - t0:.1f}s")
    attach(model, AdapterConfig(r=32))
    # Until training lands, show the mechanics with a fixed, visibly large random adapter.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    for prompt in DEMO_PROMPTS:
        print(f"\n### {prompt}")
        for c in (-1.0, 0.0, 1.0):
            print(f"  c={c:+.0f}: {generate_text(model, tok, prompt, c, args.max_new_tokens)}")
