"""Checks that need a CUDA device: the adapter's promises on GPU (fp32 and bf16), a short training run placed
by accelerate, the steering overhead, and issue 11's device checks (the sweep decoder vs one generate per
coefficient; a training step with the shared prefix, batched +-c vs two forwards) on a SmolLM2-shaped model.

    python bench/gpu_check.py                 # on a machine with a GPU; prints one JSON report
    python bench/gpu_check.py --cpu-dry-run   # issue 11's checks at toy sizes on CPU (tests this script)

The SmolLM2 weights cannot travel to the GPU machine, so the timing model has SmolLM2's configuration with
random weights (speed does not depend on the values).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import innerpissa as ip  # noqa: E402


def _logits(model, batch, c=None):
    with torch.no_grad():
        if c is None:
            return model(**batch).logits.float()
        with ip.steer(model, c):
            return model(**batch).logits.float()


def adapter_checks(dtype: torch.dtype) -> dict:
    model, tok = ip.load_model("tiny-random", dtype=dtype, device="cuda")
    batch = tok(["the sky is clear today", "Honesty matters a lot"], return_tensors="pt", padding=True).to("cuda")
    base = _logits(model, batch)
    ip.attach(model, ip.AdapterConfig(r=8, layers=(0, 1)))
    with torch.no_grad():
        for p in ip.adapter_parameters(model):
            p.normal_(std=0.3)
    lp, lm = _logits(model, batch, 1.0), _logits(model, batch, -1.0)
    mixed = _logits(model, batch, torch.tensor([1.0, -1.0], device="cuda"))
    steered = _logits(model, batch, 0.7)
    ip.merge_adapter(model, 0.7)
    merged = _logits(model, batch)
    ip.unmerge_adapter(model)
    out = {
        "dtype": str(dtype), "buffers": str(next(iter(ip.adapter_layers(model).values())).U.dtype),
        "c0_max_abs_diff": float((_logits(model, batch) - base).abs().max()),
        "pm1_differ": float((lp - lm).abs().max()),
        "per_example_vs_separate": float(max((mixed[0] - lp[0]).abs().max(), (mixed[1] - lm[1]).abs().max())),
        "merged_vs_unmerged_c0.7": float((merged - steered).abs().max()),
    }
    if dtype == torch.float32:
        from peft import PeftModel

        with tempfile.TemporaryDirectory() as d:
            ip.export_lora(model, d, c=0.7)
            fresh, _ = ip.load_model("tiny-random", device="cuda")
            out["peft_export_vs_adapter"] = float((_logits(PeftModel.from_pretrained(fresh, d), batch) - steered).abs().max())
    return out


def train_check() -> dict:
    from innerpissa.train.config import preset
    from innerpissa.train.trainer import train

    cfg = preset("tiny")
    cfg.device, cfg.epochs = "cuda", 3
    with tempfile.TemporaryDirectory() as d:
        cfg.out = d
        t = time.time()
        res = train(cfg)
        s = res.summary
    return {"seconds": round(time.time() - t, 1), "steps": s["steps"], "final_val_total": s["final_validation"].get("val_total"),
            "ordered_fwd": s["final_validation"].get("val_ordered_fwd"), "calibration": s["calibration"]}


def smollm2_shaped(dtype: torch.dtype, device: str = "cuda", std: float = 0.05, layers: int = 30):
    """SmolLM2-135M's architecture with random weights and an r 64 adapter on 8 blocks (timing only)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device, dtype).eval()
    ip.attach(model, ip.AdapterConfig(r=64, n_layers=min(8, layers - 1), svd="randomized"))
    with torch.no_grad():
        for p in ip.adapter_parameters(model):
            p.normal_(std=std)
    return model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gen_sweep(dtype: torch.dtype, device: str = "cuda", n_prompts: int = 16, tokens: int = 32,
              coeffs=(-1.0, -0.5, 0.0, 0.5, 1.0), layers: int = 30) -> dict:
    """Issue 11 item 3 on this device: the sweep decoder vs one `generate` per coefficient (random prompts
    sharing a 15-token header, like chat prompts)."""
    from innerpissa.eval.decode import decode_sweep
    from innerpissa.split import first_adapted_block

    model = smollm2_shaped(dtype, device, layers=layers)
    g = torch.Generator().manual_seed(1)
    header = torch.randint(3, 49152, (15,), generator=g).tolist()
    prompts = [header + torch.randint(3, 49152, (int(n),), generator=g).tolist()
               for n in torch.randint(8, 20, (n_prompts,), generator=g)]
    rows = [(p, c) for p in prompts for c in coeffs]
    k = first_adapted_block(model)

    def sweep():
        return decode_sweep(model, [r[0] for r in rows], [r[1] for r in rows], lambda c: ip.steer(model, c), k,
                            tokens, set(), 0)

    def per_coefficient():
        out = {}
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        for c in coeffs:
            with torch.no_grad(), ip.steer(model, c):
                gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                     do_sample=False, pad_token_id=0, eos_token_id=None)
            for p, row in zip(prompts, gen[:, width:].tolist(), strict=True):
                out[(tuple(p), c)] = row
        return [out[(tuple(p), c)] for p, c in rows]

    times, outs = {}, {}
    for name, fn in (("sweep", sweep), ("per_coefficient", per_coefficient)):
        fn()  # warm-up
        _sync(device)
        t = time.perf_counter()
        outs[name] = fn()
        _sync(device)
        times[name] = time.perf_counter() - t
    same = sum(a == b for a, b in zip(outs["sweep"], outs["per_coefficient"], strict=True)) / len(rows)
    return {"dtype": str(dtype), "rows": f"{n_prompts} prompts x {len(coeffs)} coeffs x {tokens} tokens",
            **{f"{k}_s": round(v, 3) for k, v in times.items()},
            "speedup": round(times["per_coefficient"] / times["sweep"], 2), "identical_rows": round(same, 3)}


def train_step(dtype: torch.dtype, device: str = "cuda", pairs: int = 8, repeats: int = 10, layers: int = 30) -> dict:
    """Issue 11 items 2 and 4 on this device: one training micro-batch's forwards + backward at c = +1 and -1,
    whole rows (today) vs the shared prefix + frozen blocks, batched +-c vs two forwards."""
    from innerpissa.data.batching import TokenizedPair, collate_pairs
    from innerpissa.train.forward import TrainForward

    model = smollm2_shaped(dtype, device, layers=layers)
    g = torch.Generator().manual_seed(2)
    prefix = torch.randint(3, 49152, (19,), generator=g).tolist()  # template + "Pretend you're a"
    items = []
    for i in range(pairs):
        tail = torch.randint(3, 49152, (int(torch.randint(14, 26, (1,), generator=g)),), generator=g).tolist()
        pos, neg = torch.randint(3, 49152, (2,), generator=g).tolist()
        items.append(TokenizedPair(i, prefix + [pos] + tail, prefix + [neg] + tail, len(tail)))
    batch = collate_pairs(items, 0).to(device)
    params = ip.adapter_parameters(model)

    def step(shared: bool, frozen: bool, together: bool) -> None:
        fwd = TrainForward(model, batch, shared, frozen)
        loss = sum(fwd.run(cs).float().mean() for cs in ([(1.0, -1.0)] if together else [(1.0,), (-1.0,)]))
        loss.backward()
        for p in params:
            p.grad = None

    arms = {"today": (False, False, True), "default": (True, True, True), "two_forwards": (True, True, False)}
    res = {}
    for name, a in arms.items():
        for _ in range(3):
            step(*a)
        _sync(device)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            step(*a)
            _sync(device)
            ts.append(time.perf_counter() - t)
        res[name] = statistics.median(ts)
    return {"dtype": str(dtype), "batch": f"{pairs} pairs, {batch.input_ids.shape[1]} tokens",
            **{f"{k}_ms": round(v * 1e3, 2) for k, v in res.items()},
            "default_vs_today": round(res["default"] / res["today"], 3),
            "batched_vs_two_forwards": round(res["default"] / res["two_forwards"], 3)}


def overhead(dtype: torch.dtype, batch: int = 16, seq: int = 256, repeats: int = 30) -> dict:
    model = smollm2_shaped(dtype)
    ids = torch.randint(0, 49152, (batch, seq), device="cuda")

    def timed(mode: str) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            if mode == "steered":
                with ip.steer(model, 1.0):
                    model(input_ids=ids, use_cache=False)
            else:
                model(input_ids=ids, use_cache=False)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    res = {}
    for mode in ("base", "steered", "merged"):
        if mode == "merged":
            ip.merge_adapter(model, 1.0)
        for _ in range(5):
            timed(mode)
        res[mode] = statistics.median(timed(mode) for _ in range(repeats))
        if mode == "merged":
            ip.unmerge_adapter(model)
    return {"dtype": str(dtype), "batch": f"{batch}x{seq}", **{f"{k}_ms": round(v * 1e3, 3) for k, v in res.items()},
            "steered_ratio": round(res["steered"] / res["base"], 3), "merged_ratio": round(res["merged"] / res["base"], 3)}


def main() -> None:
    import sys

    if "--cpu-dry-run" in sys.argv:  # the issue 11 checks on a tiny CPU setting, to test this script here
        for name, fn in (("gen_sweep", lambda: gen_sweep(torch.float32, "cpu", 3, 4, layers=4)),
                         ("train_step", lambda: train_step(torch.float32, "cpu", 2, 2, layers=4))):
            print(json.dumps({name: fn()}), flush=True)
        return
    assert torch.cuda.is_available(), "no CUDA device"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, fn in (("adapter_fp32", lambda: adapter_checks(torch.float32)),
                     ("adapter_bf16", lambda: adapter_checks(torch.bfloat16)),
                     ("train_tiny_cuda", train_check),
                     ("overhead_fp32", lambda: overhead(torch.float32)),
                     ("overhead_bf16", lambda: overhead(torch.bfloat16)),
                     ("gen_sweep_fp32", lambda: gen_sweep(torch.float32)),
                     ("gen_sweep_bf16", lambda: gen_sweep(torch.bfloat16)),
                     ("train_step_fp32", lambda: train_step(torch.float32)),
                     ("train_step_bf16", lambda: train_step(torch.bfloat16))):
        try:
            report[name] = fn()
        except Exception as e:  # report every check, even after one fails
            report[name] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
