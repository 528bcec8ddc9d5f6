"""Run the real repeng package on a job file; executed by repeng's own Python, never imported by innerpissa.

    <repeng-venv>/bin/python repeng_runner.py JOB.json

JOB.json: {"model": folder written by save_pretrained (model and tokenizer), "pairs": [[positive, negative],
...], "layers": [block indices], "method": "pca_diff" | "pca_center", "batch_size": int, "dtype": "float32",
"device": "cpu", "out": output stem}. It calls `repeng.ControlVector.train` unchanged and writes
`<out>.safetensors` (tensor `layer.<l>` per layer, float32) and `<out>.json` in innerpissa's
`SteeringVectors` format, with the versions used, per-layer statistics of the hidden states repeng read
(recorded through its own `transform_hiddens` hook, returned unchanged) and a digest of the token ids, so a
caller can check that both environments saw the same text. Only the standard library, numpy, torch,
transformers, safetensors and repeng are imported here.
"""

from __future__ import annotations

import hashlib
import json
import sys


def main(job_path: str) -> None:
    import numpy as np
    import repeng
    import torch
    import transformers
    from repeng import ControlVector, DatasetEntry
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=getattr(torch, job.get("dtype", "float32")))
    model = model.to(job.get("device", "cpu")).eval()
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = [DatasetEntry(positive=p, negative=n) for p, n in job["pairs"]]
    strings = [s for pair in job["pairs"] for s in pair]
    token_ids = [tokenizer(s)["input_ids"] for s in strings]
    stats: dict[str, dict[str, float]] = {}

    def record(hiddens: dict) -> dict:
        for layer, h in hiddens.items():
            diff = h[::2] - h[1::2]
            stats[str(layer)] = {"mean_diff_norm": float(np.linalg.norm(diff.mean(0))),
                                 "pair_diff_norm": float(np.linalg.norm(diff, axis=-1).mean()),
                                 "hidden_norm": float(np.linalg.norm(h, axis=-1).mean())}
        return hiddens

    vector = ControlVector.train(model, tokenizer, dataset, hidden_layers=list(job["layers"]),
                                 batch_size=int(job.get("batch_size", 32)), method=job.get("method", "pca_diff"),
                                 transform_hiddens=record)
    tensors = {f"layer.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in vector.directions.items()}
    save_file(tensors, job["out"] + ".safetensors")
    meta = {
        "kind": "steering_vectors", "method": "repeng_external", "repeng_method": job.get("method", "pca_diff"),
        "layers": sorted(int(k) for k in vector.directions), "n_pairs": len(dataset), "n_tokens": 1,
        "batch_size": int(job.get("batch_size", 32)), "model_type": vector.model_type,
        "versions": {"repeng": getattr(repeng, "__version__", _dist_version("repeng")),
                     "transformers": transformers.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "token_ids_sha1": hashlib.sha1(json.dumps(token_ids).encode()).hexdigest(),
        "stats": stats,
    }
    with open(job["out"] + ".json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python repeng_runner.py JOB.json")
    main(sys.argv[1])
