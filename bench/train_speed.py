"""Training step cost on the embedded SmolLM2 with the default preset.

    .venv/bin/python bench/train_speed.py [--steps 8] [--preset smollm2-cpu]

Times the same micro-batches (round-robin, median per step) these ways:
- `today`: +1 and -1 in one batched forward, the c = 0 reference from the cache, whole rows, every block
  per forward (the default before issue 11);
- `default`: the current default (`batch_pm`: +1 and -1 in one batched forward; `shared_prefix`: the
  tokens all rows start with once per coefficient into a KV cache; `frozen_prefix`: the blocks below the
  first adapted block once per batch); see src/innerpissa/train/forward.py;
- `frozen_only` (two forwards + frozen blocks: the default before the shared prefix), `shared_only`, `two_fwd+all`, `two_fwd+none`: the
  other combinations;  `no_cache`: a third forward at c = 0;
- `bare`: a plain forward + backward of the base model over the same tokens, twice (the +1 and -1 rows),
  with a trivial loss on the same parameters: what any trainer of this adapter must at least pay.
Prints seconds per step, ratios, the frozen states' memory and the extrapolated time per epoch and per run.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from innerpissa.adapter import steer  # noqa: E402
from innerpissa.data.batching import PairBatch  # noqa: E402
from innerpissa.train.config import preset  # noqa: E402
from innerpissa.train.trainer import Trainer, _batches  # noqa: E402


def step_value(tr: Trainer, b: PairBatch, shared: bool, frozen: bool) -> torch.Tensor:
    """The total loss of batch `b` with the shared prefix / frozen blocks on or off."""
    saved = tr.cfg.shared_prefix, tr.cfg.frozen_prefix
    tr.cfg.shared_prefix, tr.cfg.frozen_prefix = shared, frozen
    try:
        return tr.losses(b)[0]
    finally:
        tr.cfg.shared_prefix, tr.cfg.frozen_prefix = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm2-cpu")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="only today / default / frozen_only / bare")
    ap.add_argument("--modes", nargs="+", default=None, help="only these modes (default is always timed)")
    ap.add_argument("--n-pairs", type=int, default=None, help="fewer pairs (a shorter reference pass)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the timed micro-batches")
    args = ap.parse_args()

    cfg = preset(args.preset)
    cfg.progress = False
    if args.n_pairs:
        cfg.data.n_pairs = args.n_pairs
    t0 = time.perf_counter()
    tr = Trainer(cfg)
    tr._setup_reference()
    setup = time.perf_counter() - t0
    batches = _batches(tr.ds, tr.train_idx, cfg.batch_size, tr.collate)[: args.steps]

    def step_default(b: PairBatch) -> None:
        loss, _ = tr.losses(b)
        loss.backward()

    def step_with(batch_pm: bool, cache: bool, frozen: bool, shared: bool):
        def run(b: PairBatch) -> None:
            saved = tr.cfg.batch_pm, tr.cfg.cache_reference, tr.cfg.frozen_prefix, tr.cfg.shared_prefix
            tr.cfg.batch_pm, tr.cfg.cache_reference, tr.cfg.frozen_prefix, tr.cfg.shared_prefix = \
                batch_pm, cache, frozen, shared
            try:
                step_default(b)
            finally:
                tr.cfg.batch_pm, tr.cfg.cache_reference, tr.cfg.frozen_prefix, tr.cfg.shared_prefix = saved
        return run

    def step_bare(b: PairBatch) -> None:
        rows = torch.cat([b.input_ids, b.input_ids]), torch.cat([b.attention_mask, b.attention_mask])
        with steer(tr.model, 1.0):  # same parameters in the graph, same tokens as the +-1 batch
            out = tr.model(input_ids=rows[0], attention_mask=rows[1], use_cache=False)
        out.logits[:, -1].float().logsumexp(-1).mean().backward()

    modes = {"today": step_with(True, True, False, False), "default": step_default,
             "frozen_only": step_with(False, True, True, False), "shared_only": step_with(True, True, False, True),
             "two_fwd+all": step_with(False, True, True, True), "two_fwd+none": step_with(False, True, False, False),
             "no_cache": step_with(True, False, True, True), "bare": step_bare}
    if args.quick:
        modes = {k: v for k, v in modes.items() if k in ("today", "default", "frozen_only", "bare")}
    if args.modes:
        modes = {k: v for k, v in modes.items() if k in {*args.modes, "default"}}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for b in [b for _ in range(args.repeats) for b in batches]:
        for m, fn in modes.items():
            t = time.perf_counter()
            fn(b)
            times[m].append(time.perf_counter() - t)
            tr.model.zero_grad(set_to_none=True)
            for p in tr.params:
                p.grad = None
    med = {m: statistics.median(v) for m, v in times.items()}

    def loss_grads(fn, b):
        fn(b)  # fills the gradients; the loss itself is recomputed under no_grad below
        g = torch.cat([p.grad.flatten() for p in tr.params])
        for p in tr.params:
            p.grad = None
        return g
    b0 = batches[0]
    g_plain = loss_grads(step_with(False, True, False, False), b0)
    g_fast = loss_grads(step_default, b0)
    with torch.no_grad():
        l_plain = float(step_value(tr, b0, False, False))
        l_fast = float(step_value(tr, b0, True, True))
    steps_per_epoch = math.ceil(len(tr.train_idx) / cfg.batch_size)
    print(f"preset={args.preset} train_pairs={len(tr.train_idx)} batch={cfg.batch_size} pairs "
          f"epochs={cfg.epochs} threads={torch.get_num_threads()} timed_steps={len(batches)}")
    print(f"setup (model, data, SVD, reference pass): {setup:.1f}s")
    for m in modes:
        print(f"{m:12s} {med[m]:6.2f} s/step  ratio to default {med[m] / med['default']:.2f}  "
              f"epoch ~{med[m] * steps_per_epoch / 60:.1f} min")
    print(f"first batch, default vs whole rows every forward: |loss diff| {abs(l_fast - l_plain):.2e} "
          f"(loss {l_plain:.4f}), max |grad diff| {float((g_fast - g_plain).abs().max()):.2e} "
          f"(max |grad| {float(g_plain.abs().max()):.2e})")
    if "today" in med and "bare" in med:
        print(f"default / today: {med['default'] / med['today']:.2f}   "
              f"default / bare forward+backward: {med['default'] / med['bare']:.2f}")
    from innerpissa.split import cache_bytes
    from innerpissa.train.forward import TrainForward

    tokens = kept = 0
    k = prefix = 0
    for b in batches:
        fwd = TrainForward(tr.model, b)
        k, prefix = fwd.split.k, fwd.prefix_len
        tokens += b.input_ids.numel()
        kept = max(kept, sum(s.nbytes for s in fwd.lower if s is not None)
                   + (cache_bytes(fwd.cache) if fwd.cache is not None else 0))
        prefix_tokens = fwd.ids.numel() + fwd.prefix_len
    print(f"shared prefix: {prefix} tokens of every row run once (last batch: {prefix_tokens} tokens per forward "
          f"instead of {b.input_ids.numel()}); frozen blocks [0, {k}) of {tr.model.config.num_hidden_layers} run "
          f"once per batch; kept for one batch (lower states + lower keys/values): {kept / 2**20:.1f} MiB at most; "
          f"peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    total = setup + med["default"] * steps_per_epoch * cfg.epochs * 1.1  # +10%: validation each epoch
    print(f"extrapolated full default run: ~{total / 60:.1f} min")


if __name__ == "__main__":
    main()
