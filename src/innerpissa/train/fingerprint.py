"""A training run's identity: everything that changes its result, so `--resume` can refuse another run.

The fingerprint is generic: every field of `TrainConfig.to_dict()` (flattened to dotted names) except the
few that only say where or how visibly a run happens (`RUN_ONLY`) and input file paths, plus a hash of the
exact pairs selected (which covers what those files hold) and the base model's identity. A field added to the config later is covered without touching this file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: config fields that do not change the trained tensors: where outputs go, logging, how to start, and the
#: speed switches, which give the same numbers up to float rounding (tests/test_speed.py), so a run started
#: with one layout may resume with another (e.g. on another device)
RUN_ONLY = frozenset({"out", "progress", "device", "resume", "wandb", "overwrite", "debug",
                      "batch_pm", "frozen_prefix", "shared_prefix", "cache_reference"})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples-as-lists unchanged."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def pairs_digest(pairs: list) -> str:
    """sha256 of the selected pairs' texts, in order (covers data files, selection, split and template)."""
    h = hashlib.sha256()
    for p in pairs:
        for text in (getattr(p, "positive", None), getattr(p, "negative", None)):
            h.update(repr(text if text is not None else p).encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()[:16]


def run_fingerprint(config: dict[str, Any], train_pairs: list, val_pairs: list,
                    base_model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat {name: value} identity of a run (JSON-serialisable)."""
    # file paths are left out: the pairs' hashes cover what the files hold, wherever they are now
    fp = {k: v for k, v in flatten(config).items()
          if k.split(".", 1)[0] not in RUN_ONLY and not k.endswith("_file")}
    fp["pairs.train_sha256"] = pairs_digest(train_pairs)
    fp["pairs.val_sha256"] = pairs_digest(val_pairs)
    for k, v in (base_model or {}).items():
        if k != "name_or_path":  # a path may move; the architecture and sizes may not
            fp[f"base_model.{k}"] = v
    return json.loads(json.dumps(fp, default=str))


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'name: saved -> current' for every field both fingerprints have and that differs (fields only one
    side knows, e.g. options added in a newer version, are not compared)."""
    return [f"{k}: {saved[k]!r} -> {current[k]!r}" for k in sorted(saved.keys() & current.keys())
            if saved[k] != current[k]]
