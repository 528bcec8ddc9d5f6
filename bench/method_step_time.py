"""Step cost of the `smollm2-cpu` preset on SmolLM2 at several ranks, one thread.

Wall and CPU (process) seconds per micro-batch of 8 pairs (the +-1 forward batched, backward), the mean of
micro-batches 2-4; a step is `grad_accum` micro-batches. CPU seconds are the fairer number on shared cores.

    PYTHONPATH=src nice python bench/method_step_time.py 128 256 32
"""

from __future__ import annotations

import sys
import time

import torch

from innerpissa.train.config import preset
from innerpissa.train.trainer import Trainer, _batches


def measure(r: int, out: str = "/tmp/method_step_time") -> None:
    cfg = preset("smollm2-cpu")
    cfg.adapter.r, cfg.data.n_pairs, cfg.calibrate, cfg.progress = r, 48, False, False
    cfg.out = f"{out}/r{r}"
    t0, c0 = time.time(), time.process_time()
    t = Trainer(cfg)
    t._setup_reference()
    print(f"r={r} setup (load+select+reference, 48 pairs) wall {time.time() - t0:.1f}s "
          f"cpu {time.process_time() - c0:.1f}s", flush=True)
    wall, cpu = [], []
    for b in _batches(t.ds, t.train_idx, cfg.batch_size, t.collate)[:4]:
        t1, c1 = time.time(), time.process_time()
        loss, _ = t.losses(b)
        loss.backward()
        wall.append(time.time() - t1)
        cpu.append(time.process_time() - c1)
    mw, mc = sum(wall[1:]) / 3, sum(cpu[1:]) / 3
    print(f"r={r} micro-batch wall {mw:.2f}s cpu {mc:.2f}s -> step (x{cfg.grad_accum}) "
          f"wall {mw * cfg.grad_accum:.2f}s cpu {mc * cfg.grad_accum:.2f}s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for rank in [int(x) for x in sys.argv[1:]] or [128]:
        measure(rank)
