"""Objectives on the model's own outputs (METHOD section 12): train c to move what the model writes after a
persona-free input, for any trainable kind (InnerPiSSA, LoRA(c), a trained vector).

Data, made once per run from the base model (c = 0) and saved in the run folder (`completions.json`):
- for each training pair, the greedy completions y+ and y- (`n_new_tokens`) of its positive and negative
  persona prompts (as the SFT baseline makes them);
- the persona-free input x: the pair's suffix after a neutral user turn (`user`), with the run's system
  message; the persona never appears in what the adapter is trained on.
A batch is a `PairBatch` whose rows 2i and 2i+1 are x+y+ and x+y- of pair i, left padded, with each row's
`tail_len` the length of its own completion, so `TrainForward` runs it (shared chat prefix once, frozen lower
blocks once) and its tail log-probs are the completion's. With l_c(y) = log p_c(y | x) / |y| (length
normalised, so long and short completions weigh alike) and s = sign(c):
- `pref`: reference-free bidirectional preference (SimPO/RePS-like): -log sigmoid(beta s (l_c(y+) - l_c(y-)) -
  margin). c = +1 prefers y+, c = -1 prefers y-; c = 0 is the base model by construction;
- `dpo`: the same with the base model as reference (BiPO): l_c - l_0 in place of l_c (l_0 cached);
- `sft`: -l_c(chosen): imitate the persona's completion from the persona-free input (context distillation of
  the persona, both ways in one adapter);
plus `w_nll` * -l_c(chosen) beside `pref`/`dpo` (an anchor that keeps the chosen completion likely, as CPO and
ORPO do);
- `distill` (a capacity check, not a method): on the same persona-free rows, the adapter at c moves the block
  outputs of the mean-difference vector's layers (`anatomy.default_layers`) where that vector at strength c
  moves them (the vector: the mean over training pairs of the block outputs' pos - neg difference on the
  last shared tokens, the `mean_diff` baseline's). The loss per layer is the squared error over real tokens
  (each row's first, the attention sink, left out: `past_sink`) divided by the squared size of the vector's own effect there (1: the adapter does nothing, 0: it carries
  the vector exactly). It asks whether the parametrisation can carry a vector's effect at all, apart from any
  objective's geometry. Validation reports the margin m(c) = l_c(y+) - l_c(y-) at c = -1, 0, +1 and the fraction of pairs
ordered m(-1) < m(0) < m(+1), the analogue of the inner loss's separation gate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from innerpissa.anatomy import CapturePoint, HiddenCapture, block_name, default_layers
from innerpissa.data.batching import PairBatch, TokenizedPair, common_tail, position_ids_from_mask
from innerpissa.data.chat import chat_ids
from innerpissa.errors import InputError
from innerpissa.eval.generation import eos_ids, generate_ids
from innerpissa.train.directions import capture_pairs
from innerpissa.train.forward import TrainForward

OUTPUT_KINDS = ("pref", "dpo", "sft", "distill")
NEUTRAL_USER = "Make statements about the world."


OBJECTIVES = ("inner", *OUTPUT_KINDS)
Objective = Literal["inner", "pref", "dpo", "sft", "distill"]


@dataclass
class OutputConfig:
    """Settings of the output objectives (`--objective pref | dpo | sft`; `innerpissa.train.outputs`)."""

    beta: float = 5.0
    """Preference sharpness on length-normalised log-probs (nats per token)."""
    margin: float = 0.0
    """Preference margin (in units of beta x nats per token): the loss saturates once exceeded."""
    w_nll: float = 0.0
    """Weight of the chosen completion's NLL beside `pref`/`dpo` (0: off)."""
    n_new_tokens: int = 24
    """Length of the base model's greedy completions of each persona prompt."""
    user: str = NEUTRAL_USER
    """The persona-free user turn that precedes each pair's suffix in what the adapter is trained on."""
    guidance: float = 0.0
    """Contrastive guidance of the completions (0: plain greedy): each next token is the argmax of
    log p(.|own persona) + guidance * (log p(.|own persona) - log p(.|other persona)), the same token appended
    to both prompts (classifier-free guidance between the pair's two prompts). It amplifies what the personas
    change, with no label beyond the pair itself."""
    drop_loops: bool = False
    """Leave out pairs with a completion the evaluation would call invalid (`eval.gen_metrics`: under 4 words,
    distinct-2 < 0.5 or repeated 3-grams > 0.2): the model's own persona completions are often loops, which
    an output objective would otherwise teach. Text quality only, no concept label."""
    drop_persona: bool = False
    """Leave out pairs with a completion that names either persona word of its pair ("I'm a hopeful person"):
    the adapter is to express the concept, not to restate a persona it never saw."""


@dataclass(frozen=True)
class OutputItem:
    """One training pair as the output objectives see it: persona-free input and the two completions."""

    index: int
    x: list[int]
    y_pos: list[int]
    y_neg: list[int]


def collate_outputs(items: Sequence[OutputItem], pad_token_id: int) -> PairBatch:
    """Rows [x+y+, x+y-, ...], left padded; each row's `tail_len` is its own completion's length."""
    if not items:
        raise ValueError("cannot collate an empty list of output items")
    rows = [it.x + y for it in items for y in (it.y_pos, it.y_neg)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, seq in enumerate(rows):
        ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    return PairBatch(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                     pair_index=torch.tensor([it.index for it in items], dtype=torch.long).repeat_interleave(2),
                     is_positive=torch.tensor([True, False] * len(items)),
                     tail_len=torch.tensor([len(y) for it in items for y in (it.y_pos, it.y_neg)], dtype=torch.long))


def completion_logprob(tail_logp: Tensor, tail_len: Tensor) -> Tensor:
    """Mean log-prob per completion token [rows] from right-aligned tail log-probs [rows, width]."""
    width = tail_logp.shape[-1]
    cols = torch.arange(width, device=tail_logp.device)
    m = (cols[None, :] >= (width - tail_len.to(tail_logp.device))[:, None]).to(tail_logp.dtype)
    return (tail_logp * m).sum(-1) / m.sum(-1).clamp(min=1)


def output_loss(kind: str, cfg: OutputConfig, l_c: dict[float, Tensor],
                l_0: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and named terms of objective `kind` from length-normalised completion log-probs per coefficient:
    `l_c[c]` [rows] with rows [y+, y-, ...] of each pair; `l_0` the same at c = 0 (needed by `dpo`)."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output objective {kind!r}; use one of {OUTPUT_KINDS}")
    if kind == "dpo" and l_0 is None:
        raise ValueError("the dpo objective needs the base model's completion log-probs (l_0)")
    terms: dict[str, Tensor] = {}
    total = torch.zeros((), device=next(iter(l_c.values())).device)
    for c, lc in l_c.items():
        if c == 0:
            raise ValueError("output objectives train at c != 0 (c = 0 is the base model)")
        s = 1.0 if c > 0 else -1.0
        pos, neg = lc[0::2], lc[1::2]
        chosen = pos if s > 0 else neg
        if kind == "sft":
            term = -chosen.mean()
        else:
            gap = pos - neg if kind == "pref" else (pos - l_0[0::2]) - (neg - l_0[1::2])
            term = -F.logsigmoid(cfg.beta * s * gap - cfg.margin).mean()
            if cfg.w_nll > 0:
                nll = -chosen.mean()
                terms[f"nll{c:+g}"] = nll.detach()
                term = term + cfg.w_nll * nll
        terms[f"{kind}{c:+g}"] = term.detach()
        terms[f"margin{c:+g}"] = (pos - neg).mean().detach()
        total = total + term
    terms["total"] = total.detach()
    return total, terms


def margins(l_by_c: dict[float, Tensor]) -> dict[str, float]:
    """Validation: mean margin m(c) = l(y+) - l(y-) at each c and the fraction of pairs with
    m(-1) < m(0) < m(+1) (needs c = -1, 0, +1)."""
    m = {c: (v[0::2] - v[1::2]) for c, v in l_by_c.items()}
    out = {f"margin{c:+g}": float(v.mean()) for c, v in m.items()}
    out["ordered"] = float(((m[-1.0] < m[0.0]) & (m[0.0] < m[1.0])).float().mean())
    return out


# ------------------------------------------------------------------------------------------ the objective


def persona_words(positive: str, negative: str) -> tuple[str, str]:
    """The words in which a pair's two prompts differ (what is left after their common prefix and suffix,
    widened to whole words), e.g. ("cheerful", "gloomy")."""
    i = 0
    while i < min(len(positive), len(negative)) and positive[i] == negative[i]:
        i += 1
    j = 0
    while j < min(len(positive), len(negative)) - i and positive[-1 - j] == negative[-1 - j]:
        j += 1
    while i > 0 and positive[i - 1].isalnum():
        i -= 1
    while j > 0 and positive[len(positive) - j].isalnum():
        j -= 1
    return positive[i:len(positive) - j].strip(), negative[i:len(negative) - j].strip()


def _keep(texts: tuple[str, str], persona: tuple[str, str] | None, drop_loops: bool) -> bool:
    from innerpissa.eval.gen_metrics import DEFAULT_MAX_REP3, is_valid, repeated_ngram_fraction

    if drop_loops and not all(is_valid(t) and not repeated_ngram_fraction(t, 3) > DEFAULT_MAX_REP3 for t in texts):
        return False
    if persona is not None:
        names = [w.lower() for p in persona for w in re.findall(r"\w+", p) if len(w) > 3]
        if any(re.search(rf"\b{re.escape(w)}\b", t.lower()) for t in texts for w in names):
            return False
    return True


def make_items(tok, pairs: Sequence, completions: dict[str, list[list[int]]], system: str | None,
               user: str, drop_loops: bool = False, drop_persona: bool = False) -> list[OutputItem | None]:
    """One item per pair; None where a completion is empty (the model ended at once, nothing to prefer) or
    where `drop_loops` / `drop_persona` leave the pair out (`OutputConfig`)."""
    items: list[OutputItem | None] = []
    for i, (pair, yp, yn) in enumerate(zip(pairs, completions["pos"], completions["neg"], strict=True)):
        if pair.group is None:
            raise ValueError("the output objectives need pairs built from personas x suffixes (each pair's group "
                             "is its suffix, which follows the persona-free user turn); a pairs file has no "
                             "suffix per pair: use --data.personas-file with --data.suffixes-file, or a built-in set")
        x = chat_ids(tok, user, system, prefill=pair.group)
        ok = bool(yp and yn)
        if ok and (drop_loops or drop_persona):
            texts = (tok.decode(yp, skip_special_tokens=True), tok.decode(yn, skip_special_tokens=True))
            ok = _keep(texts, persona_words(pair.positive, pair.negative) if drop_persona else None, drop_loops)
        items.append(OutputItem(i, x, list(yp), list(yn)) if ok else None)
    return items


def neutral_rows(tok, pairs: Sequence, persona: Sequence, system: str | None, user: str) -> list[TokenizedPair]:
    """The persona-free version of each pair for the inner loss (`--loss-inputs neutral`, issue 17 C3): the chat
    of `user` with the pair's suffix as the assistant's prefill, as the same token ids on both rows. Its tail is
    what it shares with both persona prompts (`persona`: their `TokenizedPair`s), the part the loss reads."""
    rows = []
    for i, (pair, tp) in enumerate(zip(pairs, persona, strict=True)):
        if pair.group is None:
            raise InputError("--loss-inputs neutral needs pairs built from personas x suffixes (the suffix follows "
                             "the persona-free user turn); a pairs file has none: use --data.personas-file with "
                             "--data.suffixes-file, or a built-in set")
        ids = chat_ids(tok, user, system, prefill=pair.group)
        tail = min(common_tail(ids, tp.positive), common_tail(ids, tp.negative), tp.tail_len, len(ids) - 1)
        rows.append(TokenizedPair(i, list(ids), list(ids), max(tail, 0)))
    return rows


class OutputObjective:
    """An output objective of one run: its data (completions made once by the base model), the cached c = 0
    completion log-probs, and the loss and validation the trainer calls (`train/trainer.py`)."""

    def __init__(self, kind: str, cfg: OutputConfig, model, tok, pairs: Sequence, n_train: int, system: str | None,
                 batch_size: int, device, shared_prefix: bool = True, frozen_prefix: bool = True,
                 pair_batches: Sequence[PairBatch] = (), n_tokens: int = 4):
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output objective {kind!r}; use one of {OUTPUT_KINDS}")
        self.kind, self.cfg, self.model, self.tok, self.pairs = kind, cfg, model, tok, list(pairs)
        self.n_train, self.system, self.batch_size, self.device = n_train, system, batch_size, device
        self.shared_prefix, self.frozen_prefix = shared_prefix, frozen_prefix
        self.completions: dict[str, list[list[int]]] | None = None
        self.items: list[OutputItem | None] = []
        self.l0: Tensor | None = None  # [N, 2]: base model's l(y+), l(y-) per item
        self.pair_batches, self.n_tokens = list(pair_batches), n_tokens
        self.teacher: dict[str, Tensor] = {}  # distill: block name -> mean-difference vector

    # ---------------------------------------------------------------- data and reference

    @torch.no_grad()
    def setup(self) -> None:
        """Greedy completions of every pair's two persona prompts by the model as it is (c = 0: the base
        model), the persona-free items, and their c = 0 log-probs."""
        out: dict[str, list[list[int]]] = {"pos": [], "neg": []}
        enc = {attr: [self.tok(getattr(p, attr), add_special_tokens=False)["input_ids"] for p in self.pairs]
               for attr in ("positive", "negative")}
        for side, attr, other in (("pos", "positive", "negative"), ("neg", "negative", "positive")):
            ids = enc[attr]
            for k in range(0, len(ids), 16):
                if self.cfg.guidance:
                    out[side] += guided_ids(self.model, self.tok, ids[k:k + 16], enc[other][k:k + 16],
                                            self.cfg.n_new_tokens, self.cfg.guidance)
                else:
                    out[side] += generate_ids(self.model, self.tok, ids[k:k + 16], self.cfg.n_new_tokens)
        if self.kind == "distill":
            self.teacher = mean_difference(self.model, self.pair_batches, self.n_tokens)
        self._build(out, None)

    def _build(self, completions: dict[str, list[list[int]]], l0: Tensor | None) -> None:
        self.completions = completions
        self.items = make_items(self.tok, self.pairs, completions, self.system, self.cfg.user, self.cfg.drop_loops,
                                self.cfg.drop_persona)
        self.train_idx = [i for i in range(self.n_train) if self.items[i] is not None]
        self.val_idx = [i for i in range(self.n_train, len(self.items)) if self.items[i] is not None]
        if not self.train_idx:
            raise ValueError("no training pair is left: every one has an empty completion (the model ends at once) "
                             "or was dropped by --outputs.drop-loops / --outputs.drop-persona; raise "
                             "--outputs.n-new-tokens, turn the filters off or check the persona prompts")
        if l0 is None:
            l0 = torch.full((len(self.items), 2), float("nan"))
            for batch in self.batches(self.train_idx + self.val_idx):
                lp = completion_logprob(TrainForward(self.model, batch.to(self.device)).run(None), batch.tail_len)
                l0[batch.pair_index[0::2]] = lp.view(-1, 2).cpu()
        self.l0 = l0

    def state_dict(self) -> dict:
        return {"objective": self.kind, "completions": self.completions, "l0": self.l0, "teacher": self.teacher}

    def load_state_dict(self, sd: dict) -> None:
        self.teacher = dict(sd.get("teacher") or {})
        self._build({k: [list(map(int, y)) for y in v] for k, v in sd["completions"].items()}, sd["l0"])

    def readable(self) -> list[dict]:
        """Per pair: the persona-free input's suffix and both completions as text (None: dropped, empty)."""
        dec = self.tok.decode
        return [{"pair": i, "suffix": p.group, "split": "train" if i < self.n_train else "validation",
                 "positive": dec(self.completions["pos"][i]), "negative": dec(self.completions["neg"][i]),
                 "used": self.items[i] is not None} for i, p in enumerate(self.pairs)]

    @property
    def dropped(self) -> int:
        return sum(it is None for it in self.items)

    def batches(self, idx: Sequence[int]) -> list[PairBatch]:
        items = [self.items[i] for i in idx if self.items[i] is not None]
        pad = self.tok.pad_token_id
        return [collate_outputs(items[k:k + self.batch_size], pad) for k in range(0, len(items), self.batch_size)]

    # ---------------------------------------------------------------- loss and validation

    def _l(self, batch: PairBatch, cs: Sequence[float], batched: bool = True) -> dict[float, Tensor]:
        fwd = TrainForward(self.model, batch, self.shared_prefix, self.frozen_prefix)
        out: dict[float, Tensor] = {}
        for group in ([tuple(cs)] if batched else [(c,) for c in cs]):
            lp = completion_logprob(fwd.run(group), batch.tail_len.repeat(len(group)))
            out.update({c: lp[i * fwd.rows:(i + 1) * fwd.rows] for i, c in enumerate(group)})
        return out

    def _l0(self, batch: PairBatch) -> Tensor:
        return self.l0[batch.pair_index[0::2].cpu()].reshape(-1).to(batch.input_ids.device)

    def losses(self, batch: PairBatch, batched: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and named terms of one micro-batch at c = +1 and c = -1."""
        if self.kind == "distill":
            return self._distill(batch)
        return output_loss(self.kind, self.cfg, self._l(batch, (1.0, -1.0), batched), self._l0(batch))

    def _distill(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        cs = (1.0, -1.0)
        points = [CapturePoint(name) for name in self.teacher]
        rows = batch.input_ids.shape[0]
        per_row = torch.tensor(cs, device=batch.input_ids.device).repeat_interleave(rows)
        inputs = {k: v.repeat(len(cs), 1) for k, v in batch.model_inputs().items()}
        with torch.no_grad():
            with HiddenCapture(self.model, points) as cap:
                self.model(**inputs, use_cache=False)
                base = {p.key: cap.hidden[p.key] for p in points}
            with _added(self.model, self.teacher, per_row), HiddenCapture(self.model, points) as cap:
                self.model(**inputs, use_cache=False)
                target = {p.key: cap.hidden[p.key] for p in points}
        with HiddenCapture(self.model, points) as cap:
            fwd = TrainForward(self.model, batch, shared_prefix=False, frozen=self.frozen_prefix)
            fwd.run(cs)
            got = {p.key: cap.hidden[p.key] for p in points}
        real = past_sink(inputs["attention_mask"])
        loss = torch.zeros((), device=real.device)
        for p in points:
            err = (got[p.key] - target[p.key])[real].float().pow(2).sum()
            effect = (target[p.key] - base[p.key])[real].float().pow(2).sum().clamp(min=1e-12)
            loss = loss + err / effect
        loss = loss / len(points)
        return loss, {"distill": loss.detach(), "total": loss.detach()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation pairs: the loss terms (pair-weighted), the margins m(-1), m(0), m(+1) and `val_ordered`,
        the fraction of pairs with m(-1) < m(0) < m(+1)."""
        sums: dict[str, float] = {}
        ls: dict[float, list[Tensor]] = {-1.0: [], 0.0: [], 1.0: []}
        n = 0
        for batch in self.batches(self.val_idx):
            batch = batch.to(self.device)
            l_c = self._l(batch, (1.0, -1.0))
            terms = (self._distill(batch)[1] if self.kind == "distill"
                     else output_loss(self.kind, self.cfg, l_c, self._l0(batch))[1])
            k = batch.n_pairs
            for key, v in terms.items():
                sums[key] = sums.get(key, 0.0) + float(v) * k
            n += k
            for c, v in {**l_c, 0.0: self._l0(batch)}.items():
                ls[c].append(v.cpu())
        out = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
        if n:
            m = margins({c: torch.cat(v) for c, v in ls.items()})
            out.update({"val_ordered": m["ordered"], "val_margin+0": m["margin+0"]})
        return out


@torch.no_grad()
def mean_difference(model, pair_batches: Sequence[PairBatch], n_tokens: int) -> dict[str, Tensor]:
    """The mean-difference (CAA) vector at each of `anatomy.default_layers`' block outputs: the mean over pairs
    of pos - neg on the last `n_tokens` shared tokens (the `mean_diff` baseline's vector)."""
    names = [block_name(model, layer) for layer in default_layers(model)]
    captured, _ = capture_pairs(model, pair_batches, [CapturePoint(n) for n in names], n_tokens)
    return {n: (captured[CapturePoint(n).key][0] - captured[CapturePoint(n).key][1]).mean((0, 1)) for n in names}


def past_sink(attention_mask: Tensor) -> Tensor:
    """The real tokens of left-padded rows, each row's first left out: that token is the attention sink, whose
    hidden state is ~100x any other's on real models (SmolLM2: norm ~25,000), so an untrained adapter's tiny
    change there outweighed a vector's whole effect (distill loss 76 at initialisation instead of ~1) and the
    fit chased the sink."""
    real = attention_mask.bool().clone()
    real[torch.arange(real.shape[0], device=real.device), real.int().argmax(1)] = False
    return real


class _added:
    """Context: block `name`'s output gets c_row * v[name] (c per batch row), through forward hooks that the
    caller's later hooks (a capture) see."""

    def __init__(self, model, vectors: dict[str, Tensor], c: Tensor):
        self.model, self.vectors, self.c = model, vectors, c
        self.handles: list = []

    def __enter__(self):
        for name, v in self.vectors.items():
            def hook(_m, _a, out, v=v):
                h = out[0] if isinstance(out, tuple) else out
                h = h + self.c.to(h.dtype).view(-1, 1, 1) * v.to(h.device, h.dtype)
                return (h, *out[1:]) if isinstance(out, tuple) else h
            self.handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()


@torch.no_grad()
def guided_ids(model, tok, own: Sequence[Sequence[int]], other: Sequence[Sequence[int]], max_new_tokens: int,
               guidance: float) -> list[list[int]]:
    """Greedy completions of the `own` prompts under contrastive guidance against the `other` prompts (row i
    against row i; `OutputConfig.guidance`), with one KV cache for both halves; cut before end of sequence."""
    from transformers import DynamicCache

    seqs = [list(x) for x in own] + [list(x) for x in other]
    n, dev = len(own), next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), int(pad), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, q in enumerate(seqs):
        ids[i, width - len(q):] = torch.tensor(q)
        mask[i, width - len(q):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    pos = position_ids_from_mask(mask)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                   use_cache=True).logits[:, -1].float()
    stop, out, done = eos_ids(model, tok), [[] for _ in range(n)], [False] * n
    for _ in range(max_new_tokens):
        lp = logits.log_softmax(-1)
        nxt = (lp[:n] + guidance * (lp[:n] - lp[n:])).argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                done[i] = t in stop
                if not done[i]:
                    out[i].append(t)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(len(seqs), 1, dtype=mask.dtype, device=dev)], 1)
        pos = pos[:, -1:] + 1
        logits = model(input_ids=torch.cat([nxt, nxt])[:, None], attention_mask=mask, position_ids=pos,
                       past_key_values=cache, use_cache=True).logits[:, -1].float()
    return out
