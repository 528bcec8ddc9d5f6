"""Generation evaluation (METHOD section 11): greedy continuations of held-out neutral prompts at every
coefficient of a sweep, scored by an independent concept scorer, with fluency under the unsteered model.

- `generate_sweep`: every (prompt, c) row of a sweep in one greedy decode with one coefficient per row
  (`eval/decode.py`: the chat header and each prompt's tokens below the first steered block computed once),
  for steerers that can take a per-row coefficient (the adapter, the residual-stream vectors, prompting,
  which only changes each row's system message); other steerers fall back to one `generate` per
  coefficient. Both give the same tokens as generating each coefficient alone.
- `continuation_nll`: per-token NLL of each continuation under the unsteered model, always in the neutral
  context (default system message and the user prompt), so prompting's persona does not lower its own NLL.
- `evaluate_generation`: both, plus the pure metrics of `gen_metrics` (score, distinct-2, rep-3, valid).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from innerpissa.anatomy import check_context
from innerpissa.data.builtin import BUILTIN_DIR
from innerpissa.data.chat import DEFAULT_SYSTEM, chat_ids
from innerpissa.data.pairs import read_list
from innerpissa.eval.decode import can_decode_sweep, decode_sweep
from innerpissa.eval.gen_metrics import Scorer, text_metrics
from innerpissa.eval.harness import pad_left
from innerpissa.steering import Steerer

PROMPT_SPLITS = ("dev", "test", "all")


def load_neutral_prompts(split: str = "test", name: str = "neutral_prompts") -> list[str]:
    """The project's held-out neutral user prompts: `dev` (for choosing variants and budgets), `test` (for
    reporting) or `all`. Never used in training (`tests/test_generation.py` checks there is no overlap)."""
    if split not in PROMPT_SPLITS:
        raise ValueError(f"unknown prompt split {split!r}; use one of {PROMPT_SPLITS}")
    data = json.loads((BUILTIN_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return list(data["dev"]) + list(data["test"]) if split == "all" else list(data[split])


def load_prompts(split: str, prompts_file: str | Path | None = None, n: int | None = None) -> list[str]:
    """The first `n` (None: all) of a user's prompts file (one per line, or a JSON list), else of the built-in
    held-out neutral prompts of `split`."""
    prompts = read_list(prompts_file) if prompts_file is not None else load_neutral_prompts(split)
    return prompts[:n] if n is not None else prompts


def supports_per_row(steerer: Steerer) -> bool:
    """Whether `per_row_state` can put each batch row at its own coefficient for this steerer."""
    return steerer.per_row_coeffs or steerer.prompt_only


@contextmanager
def per_row_state(steerer: Steerer, c: Tensor) -> Iterator[None]:
    """The model with batch row i at coefficient c[i] (1-D tensor), for the steerers `supports_per_row`:
    `steerer.at(c)` for those taking per-row coefficients; nothing for prompt-only steerers (each row carries
    its own system message), whose coefficients are still validated."""
    if steerer.prompt_only:
        for x in c.tolist():
            steerer.system_prompt(x, DEFAULT_SYSTEM)
        yield
    elif steerer.per_row_coeffs:
        with steerer.at(c):
            yield
    else:
        raise TypeError(f"{type(steerer).__name__} cannot take per-row coefficients; generate per coefficient")


def eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end a continuation: the tokenizer's and the generation config's end-of-sequence ids."""
    ids = set()
    for e in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, list | tuple):
            ids.update(int(x) for x in e)
    return ids


@torch.no_grad()
def generate_ids(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations (token ids, cut before the first end-of-sequence) of left-padded prompts in one
    `generate` call with the KV cache; the model is used in whatever state the caller put it."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_context(model, [len(p) for p in prompt_ids], max_new_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask, _ = pad_left(prompt_ids, pad)
    dev = next(model.parameters()).device
    out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad, use_cache=True, temperature=None, top_p=None,
                         top_k=None)
    eos = eos_ids(model, tokenizer)
    conts = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((k for k, t in enumerate(row) if t in eos), len(row))
        conts.append(row[:cut])
    return conts


def generate_sweep(model, tokenizer, prompts: Sequence[str], steerer: Steerer, coeffs: Sequence[float],
                   max_new_tokens: int = 40, system: str = DEFAULT_SYSTEM, max_batch: int | None = None,
                   batched: bool = True) -> pd.DataFrame:
    """Continuations of every prompt at every coefficient: columns `prompt_idx`, `c`, `system`, `ids`,
    `continuation`, `n_new`.

    With `batched` (and a steerer that `supports_per_row`) all rows go through one generate with per-row
    coefficients (`max_batch` rows at most per call, None: all at once); otherwise one generate per c.
    """
    if not prompts:
        raise ValueError("no prompts given")
    if not coeffs:
        raise ValueError("no coefficients given")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    was_training = model.training
    model.eval()
    rows = [(i, float(c)) for c in coeffs for i in range(len(prompts))]
    systems = {c: steerer.system_prompt(c, system) for c in {r[1] for r in rows}}
    encoded = [chat_ids(tokenizer, prompts[i], systems[c]) for i, c in rows]
    longest = [0] * len(prompts)
    for (i, _), e in zip(rows, encoded, strict=True):
        longest[i] = max(longest[i], len(e))
    check_context(model, longest, max_new_tokens)  # a longer prompt would decode garbage, silently
    conts: list[list[int]] = [[] for _ in rows]
    try:
        if batched and supports_per_row(steerer) and can_decode_sweep(model):
            # prompt-major chunks: all coefficients of a prompt decode together (its own tokens are shared)
            order = sorted(range(len(rows)), key=lambda j: (rows[j][0], j))
            step = max_batch or len(rows)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            for k in range(0, len(order), step):
                part = order[k:k + step]
                got = decode_sweep(model, [encoded[j] for j in part], [rows[j][1] for j in part],
                                   lambda c: per_row_state(steerer, c), steerer.first_steered_block(model),
                                   max_new_tokens, eos_ids(model, tokenizer), pad)
                for j, ids in zip(part, got, strict=True):
                    conts[j] = ids
        elif batched and supports_per_row(steerer):
            step = max_batch or len(rows)
            for k in range(0, len(rows), step):
                c = torch.tensor([r[1] for r in rows[k:k + step]], dtype=torch.float32)
                with per_row_state(steerer, c):
                    conts[k:k + step] = generate_ids(model, tokenizer, encoded[k:k + step], max_new_tokens)
        else:
            for c in dict.fromkeys(r[1] for r in rows):
                idx = [j for j, r in enumerate(rows) if r[1] == c]
                step = max_batch or len(idx)
                with steerer.at(c):
                    for k in range(0, len(idx), step):
                        part = idx[k:k + step]
                        for j, ids in zip(part, generate_ids(model, tokenizer, [encoded[j] for j in part],
                                                             max_new_tokens), strict=True):
                            conts[j] = ids
    finally:
        model.train(was_training)
    return pd.DataFrame({
        "prompt_idx": [r[0] for r in rows], "c": [r[1] for r in rows], "system": [systems[r[1]] for r in rows],
        "ids": conts, "continuation": [tokenizer.decode(x, skip_special_tokens=True).strip() for x in conts],
        "n_new": [len(x) for x in conts],
    })


@torch.no_grad()
def continuation_nll(model, tokenizer, prompts: Sequence[str], prompt_idx: Sequence[int],
                     conts: Sequence[Sequence[int]], system: str = DEFAULT_SYSTEM, batch_size: int = 16) -> np.ndarray:
    """Mean per-token NLL of each continuation given the neutral chat prompt, under the model as it is (call
    it unsteered). Empty continuations get NaN. Output logits are kept only for the continuation tail."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    ctx = {i: chat_ids(tokenizer, prompts[i], system) for i in set(prompt_idx)}
    out = np.full(len(conts), np.nan)
    todo = [j for j, c in enumerate(conts) if len(c) > 0]
    was_training = model.training
    model.eval()
    try:
        for k in range(0, len(todo), batch_size):
            part = todo[k:k + batch_size]
            seqs = [ctx[prompt_idx[j]] + list(conts[j]) for j in part]
            ids, mask, pos = pad_left(seqs, pad)
            keep = max(len(conts[j]) for j in part) + 1
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                           logits_to_keep=keep).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)  # position t of the kept tail predicts t + 1
            targets = ids[:, -keep + 1:].to(dev)
            tok_lp = logp.gather(-1, targets[..., None])[..., 0]
            for r, j in enumerate(part):
                n = len(conts[j])
                out[j] = float(-tok_lp[r, -n:].mean())
    finally:
        model.train(was_training)
    return out


def evaluate_generation(model, tokenizer, prompts: Sequence[str], steerer: Steerer, coeffs: Sequence[float],
                        scorer: Scorer, max_new_tokens: int = 40, system: str = DEFAULT_SYSTEM,
                        max_batch: int | None = None, nll_batch: int = 16) -> pd.DataFrame:
    """`generate_sweep` plus, per row, the concept score, distinct-2, rep-3, valid and the unsteered NLL."""
    df = generate_sweep(model, tokenizer, prompts, steerer, coeffs, max_new_tokens, system, max_batch)
    metrics = text_metrics(df["continuation"].tolist(), scorer)
    df = pd.concat([df, metrics], axis=1)
    df["nll"] = continuation_nll(model, tokenizer, prompts, df["prompt_idx"].tolist(), df["ids"].tolist(), system,
                                 nll_batch)
    df["prompt"] = [prompts[i] for i in df["prompt_idx"]]
    return df
