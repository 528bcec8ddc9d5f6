"""The sentiment probe's response to persona prompting on SmolLM2 (docs/RESULTS.md)."""
import torch

from innerpissa.baselines.prompting import PersonaPrompting
from innerpissa.eval.sentiment_probe import sentiment_probe_fn
from innerpissa.models import load_model

torch.set_num_threads(1)
m, t = load_model("smollm2")
fn = sentiment_probe_fn(m, t)
pp = PersonaPrompting(builtin="sentiment")
D = "You are a helpful assistant."
s = {c: fn(pp.system_prompt(c, D)) for c in (-1.0, 0.0, 1.0)}
for c, v in s.items():
    print(f"c={c:+.0f} mean {float(v.mean()):+.3f} nats")
d = s[1.0] - s[-1.0]
print(f"cheerful - gloomy: {float(d.mean()):+.3f} nats, se {float(d.std() / len(d) ** 0.5):.3f}, positive on {int((d > 0).sum())}/{len(d)} items")
