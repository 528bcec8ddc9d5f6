"""`make demo`: the whole workflow on the embedded model, small enough for 2 CPU cores (a few minutes).

Train a small adapter (64 pairs, 2 epochs), show greedy answers at c = -1, 0, +1, then evaluate it on a
small random sample of DailyDilemmas and print the table and the plot's path. The full-size settings are
the `smollm2-cpu` preset and `innerpissa compare` (see docs/RESULTS.md).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path


def run_demo(args) -> None:
    from innerpissa.adapter import load_adapter
    from innerpissa.cli import DEMO_PROMPTS, generate_text
    from innerpissa.cli_eval import EvalConfig, eval_main
    from innerpissa.data.dilemmas import resolve_dir
    from innerpissa.models import load_model
    from innerpissa.train.config import preset
    from innerpissa.train.trainer import train

    out = Path(args.out)
    data_dir = getattr(args, "data_dir", None)
    if resolve_dir(data_dir) is None and importlib.util.find_spec("datasets") is None:
        raise FileNotFoundError(
            "the demo's evaluation needs DailyDilemmas and none was found: pass --data-dir FOLDER (or set "
            "$INNERPISSA_DILEMMAS_DIR), run from the folder where ../shared/data/daily_dilemmas exists, or "
            "pip install 'innerpissa[hub]' to fetch it from the Hugging Face hub")
    cfg = preset("smollm2-cpu")
    full = (cfg.data.n_pairs, cfg.epochs)
    cfg.model, cfg.out, cfg.overwrite = args.model, out / "train", True  # the demo folder is the demo's own
    cfg.data.n_pairs, cfg.epochs, cfg.adapter.n_layers = 64, 2, 6
    t0 = time.time()
    print(f"training an InnerPiSSA adapter on {cfg.model}: {cfg.data.n_pairs} honesty pairs, {cfg.epochs} epochs "
          f"(the full preset uses {full[0]} pairs and up to {full[1]} epochs)")
    result = train(cfg)
    cal = result.summary["calibration"]
    print(f"trained in {time.time() - t0:.0f}s; validation pairs ordered g(-1)<0<g(+1): "
          f"{result.summary['final_validation'].get('val_ordered_fwd', float('nan')):.0%}; "
          f"probe effect (honesty of +1 minus -1): {cal['probe_effect']:+.3f} nats (sign flipped: {cal['flipped']})")

    model, tok = load_model(cfg.model)
    load_adapter(model, result.adapter_path)
    for prompt in DEMO_PROMPTS:
        print(f"\n### {prompt}")
        for c in (-1.0, 0.0, 1.0):
            print(f"  c={c:+.0f}: {generate_text(model, tok, prompt, c, args.max_new_tokens)}")
    print("\nevaluating on 32 random DailyDilemmas (64 rows) at c = -1, 0, +1 ...")
    eval_main(EvalConfig(adapter=result.adapter_path, model=cfg.model, coeffs=(-1.0, 0.0, 1.0), n_dilemmas=32,
                         out=out / "eval", examples=False, n_boot=300, batch_size=8, data_dir=data_dir))
