"""Choose the held-out neutral prompts from the unsteered SmolLM2 continuations only (rule in the JSON)."""
import json
import random

import pandas as pd

P = [line.strip() for line in open("bench/neutral_prompts/candidates.txt") if line.strip()]
df = pd.read_csv("bench/neutral_prompts/base.csv")
s = dict(zip(df.prompt_idx, df.score, strict=True))
print("candidates", len(P), "mean", df.score.mean(), "median", df.score.median())
print((df.score > 0.85).sum(), "above 0.85;", (df.score < -0.85).sum(), "below -0.85")
keep = [i for i in range(len(P)) if abs(s[i]) <= 0.85]
while abs(sum(s[i] for i in keep) / len(keep)) > 0.25:
    m = sum(s[i] for i in keep) / len(keep)
    worst = max(keep, key=lambda i: s[i] if m > 0 else -s[i])
    keep.remove(worst)
print("kept", len(keep), "mean", sum(s[i] for i in keep) / len(keep))
rng = random.Random(0)
order = keep[:]
rng.shuffle(order)
n_dev = len(order) // 3
dev, test = sorted(order[:n_dev]), sorted(order[n_dev:])
for name, part in (("dev", dev), ("test", test)):
    v = [s[i] for i in part]
    print(name, len(part), "mean", sum(v) / len(v), "min", min(v), "max", max(v))
out = {
 "name": "neutral_prompts",
 "description": "Held-out neutral user prompts for the generation evaluation, written for innerpissa (MIT). Never used in training (no overlap with any built-in suffix; checked in tests/test_generation.py).",
 "selection": ("148 candidate prompts were written by the project. Each was continued greedily (40 new tokens, "
               "system 'You are a helpful assistant.') by the UNSTEERED SmolLM2-135M-Instruct and scored with "
               "VADER compound; no steered output was generated before this choice. Rule: drop candidates whose "
               "unsteered score is saturated (|compound| > 0.85), then, while the mean of the rest is outside "
               "+-0.25, drop the candidate most extreme on the side of the mean. The kept prompts were shuffled "
               "(random.Random(0)) and split one third dev (for choosing variants and budgets), two thirds test "
               "(for reporting). Scripts, candidates and the unsteered scores: bench/neutral_prompts/; date 2026-11-26."),
 "unsteered_smollm2_vader": {"dev_mean": round(sum(s[i] for i in dev) / len(dev), 4),
                             "test_mean": round(sum(s[i] for i in test) / len(test), 4)},
 "dev": [P[i] for i in dev],
 "test": [P[i] for i in test],
}
json.dump(out, open("src/innerpissa/data/builtin/neutral_prompts.json", "w"), indent=1, ensure_ascii=False)
