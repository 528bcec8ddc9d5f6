"""Unsteered SmolLM2 continuations of the candidate prompts (input to choose_prompts.py; run from the repo root)."""
import time

import torch

from innerpissa.eval.gen_metrics import VaderScorer
from innerpissa.eval.generation import evaluate_generation
from innerpissa.models import load_model
from innerpissa.steering import NoSteering

torch.set_num_threads(2)
P = [line.strip() for line in open("bench/neutral_prompts/candidates.txt") if line.strip()]
m, t = load_model("smollm2")
t0 = time.time()
df = evaluate_generation(m, t, P, NoSteering(), [0.0], VaderScorer(), max_new_tokens=40, max_batch=50)
print("seconds", time.time() - t0, flush=True)
df.drop(columns=["ids"]).to_csv("bench/neutral_prompts/base.csv", index=False)
print(df[["score","nll","distinct2","valid"]].describe())
