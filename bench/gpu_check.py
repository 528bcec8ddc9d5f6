"""Checks that need a CUDA device: the adapter's promises on GPU (fp32 and bf16), a short training run placed
by accelerate, and the steering overhead on a SmolLM2-shaped model.

    python bench/gpu_check.py            # on a machine with a GPU; prints one JSON report

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


def overhead(dtype: torch.dtype, batch: int = 16, seq: int = 256, repeats: int = 30) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to("cuda", dtype).eval()
    ip.attach(model, ip.AdapterConfig(r=64, n_layers=8, svd="randomized"))
    with torch.no_grad():
        for p in ip.adapter_parameters(model):
            p.normal_(std=0.05)
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
    assert torch.cuda.is_available(), "no CUDA device"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, fn in (("adapter_fp32", lambda: adapter_checks(torch.float32)),
                     ("adapter_bf16", lambda: adapter_checks(torch.bfloat16)),
                     ("train_tiny_cuda", train_check),
                     ("overhead_fp32", lambda: overhead(torch.float32)),
                     ("overhead_bf16", lambda: overhead(torch.bfloat16))):
        try:
            report[name] = fn()
        except Exception as e:  # report every check, even after one fails
            report[name] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
