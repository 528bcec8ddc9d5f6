"""Adapter overhead on the embedded SmolLM2: forward time, memory, SVD initialisation.

    .venv/bin/python bench/overhead.py [--r 64] [--n-layers 8] [--batch 8] [--seq 128] [--repeats 15]

Base, steered (unmerged) and merged forwards are timed round-robin in one run (so background load hits
all three alike) and reported as medians and ratios to the base forward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import innerpissa as ip  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--r", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    torch.manual_seed(0)

    model, tok = ip.load_model(args.model)
    cfg = dict(r=args.r, n_layers=args.n_layers, target_modules=("o_proj", "down_proj"))

    # SVD initialisation time, full vs randomized
    svd_times = {}
    for kind in ("full", "randomized"):
        t = time.perf_counter()
        ip.attach(model, ip.AdapterConfig(svd=kind, **cfg))
        svd_times[kind] = time.perf_counter() - t
        if kind == "full":
            ip.detach_adapter(model)
    layers = ip.adapter_layers(model)
    with torch.no_grad():  # trained-size parameters, so the steered path does real work
        for p in ip.adapter_parameters(model):
            p.normal_(std=0.05)

    # memory: buffers U, S, V (+ the r x r inference cache) vs what a dense W_res copy would cost
    buf = sum(b.numel() * b.element_size() for layer in layers.values() for b in (layer.U, layer.S, layer.V))
    params = sum(p.numel() * p.element_size() for p in ip.adapter_parameters(model))
    bound = sum(args.r * (sum(layer.base_layer.weight.shape) + 1) * 4 for layer in layers.values())
    dense = sum(layer.base_layer.weight.numel() * layer.base_layer.weight.element_size() for layer in layers.values())

    vocab = tok.vocab_size
    ids = torch.randint(100, vocab - 1, (args.batch, args.seq))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def fwd() -> None:
        with torch.no_grad():
            model(**batch, use_cache=False)

    def timed(mode: str) -> float:
        if mode == "steered":
            with ip.steer(model, 1.0):
                fwd()  # warm the cached mixing matrix outside the timing
                t = time.perf_counter()
                fwd()
                return time.perf_counter() - t
        if mode == "merged":
            ip.merge_adapter(model, 1.0)
            try:
                t = time.perf_counter()
                fwd()
                return time.perf_counter() - t
            finally:
                ip.unmerge_adapter(model)
        t = time.perf_counter()
        fwd()
        return time.perf_counter() - t

    for mode in ("base", "steered", "merged"):
        timed(mode)  # warm-up
    times: dict[str, list[float]] = {"base": [], "steered": [], "merged": []}
    for _ in range(args.repeats):
        for mode in times:
            times[mode].append(timed(mode))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"model={args.model} torch_threads={torch.get_num_threads()} layers={len(layers)} "
          f"({args.n_layers} blocks x o_proj,down_proj) r={args.r} batch={args.batch}x{args.seq} tokens "
          f"repeats={args.repeats}")
    for k in times:
        print(f"forward {k:8s} median {med[k] * 1000:8.1f} ms  ratio to base {med[k] / med['base']:.3f}")
    print(f"adapter buffers {buf / 1e6:.2f} MB (bound r(d_in+d_out+1) floats: {bound / 1e6:.2f} MB) "
          f"+ parameters {params / 1e3:.1f} kB; a dense W_res copy would be {dense / 1e6:.2f} MB "
          f"({dense / buf:.1f}x)")
    print(f"svd init: full {svd_times['full']:.2f}s  randomized {svd_times['randomized']:.2f}s")


if __name__ == "__main__":
    main()
