"""The training loop, top to bottom: data, adapter, frozen reference, optimisation, checkpoints, calibration.

One step takes a micro-batch of pairs [pos, neg, ...], runs it at c = +1 and c = -1 (`train/forward.py`:
the rows' shared prefix and the frozen lower blocks once, the rest per coefficient), reads the hidden states at the loss point and the shared-tail log-probs, and
combines the projection, coherence and ordering terms (METHOD section 5) against the cached c = 0 reference.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from innerpissa.adapter import adapter_parameters, save_adapter
from innerpissa.adapter.io import base_model_identity
from innerpissa.adapter.kinds import attach_kind
from innerpissa.anatomy import HiddenCapture
from innerpissa.data.batching import PairBatch, PairCollator, PairDataset
from innerpissa.data.config import make_pairs
from innerpissa.errors import InnerPissaError, InputError, ResumeMismatch
from innerpissa.fileio import atomic_write_json, dumps_strict
from innerpissa.models import load_model, model_identity
from innerpissa.train.checkpoint import Checkpoint, load_checkpoint, read_checkpoint_state, save_checkpoint
from innerpissa.train.config import TrainConfig
from innerpissa.train.fingerprint import fingerprint_diff, run_fingerprint
from innerpissa.train.forward import TrainForward
from innerpissa.train.losses import combine
from innerpissa.train.outputs import OutputObjective, neutral_rows
from innerpissa.train.reference import Reference, build_reference, projections, tail_width
from innerpissa.train.runfolder import (
    check_out,
    check_train_numbers,
    clear_run,
    default_out,
    holds_run,
    run_lock,
    sigterm_as_interrupt,
)

COEFFS = (1.0, -1.0)


class TrainingDiverged(InnerPissaError, RuntimeError):
    """A loss, gradient, parameter or validation metric became NaN or infinite; the last good checkpoint
    (if any) is kept and no adapter is written."""


@dataclass
class TrainResult:
    out: Path
    adapter_path: Path
    summary: dict[str, Any]
    already_finished: bool = False
    """`--resume` found this run finished: nothing was trained or written."""


def _batches(ds: PairDataset, idx: list[int], batch_size: int, collate: PairCollator) -> list[PairBatch]:
    return [collate([ds[i] for i in idx[k:k + batch_size]]) for k in range(0, len(idx), batch_size)]


def run_identity(cfg: TrainConfig, model, train_pairs: list, val_pairs: list) -> dict[str, Any]:
    """A run's fingerprint (`train.fingerprint`): its settings, the exact pairs and the base model (architecture,
    config and weights). A checkpoint resumes, and `compare`/`ablate` reuse a finished run, only when it matches."""
    base = {**base_model_identity(model), **model_identity(model)}
    return run_fingerprint(cfg.to_dict(), train_pairs, val_pairs, base)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Training order of epoch `epoch`: a pure function of (seed, epoch), so a resumed run replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class Trainer:
    """Holds the model, data and reference; `fit()` runs (or resumes) training and writes the outputs."""

    def __init__(self, cfg: TrainConfig, model=None, tokenizer=None):
        from accelerate import Accelerator

        self.cfg = cfg
        if cfg.out is None:
            cfg.out = default_out(str(getattr(cfg, "concept", None) or cfg.data.builtin or "run"))
        check_train_numbers(cfg)
        check_out(Path(cfg.out), cfg.resume, cfg.overwrite)  # before anything is loaded or written
        self.acc = Accelerator(cpu=cfg.device == "cpu")
        self.device = torch.device(cfg.device) if cfg.device else self.acc.device
        if model is None:
            model, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
        self.model, self.tok = model.to(self.device).eval(), tokenizer
        self.out = Path(cfg.out)

        train_pairs, val_pairs = make_pairs(cfg.data, cfg.seed, tokenizer)
        self.ds = PairDataset(train_pairs + val_pairs, tokenizer, max_length=cfg.data.max_length)
        self.train_idx = list(range(len(train_pairs)))
        self.val_idx = list(range(len(train_pairs), len(self.ds)))
        self.collate = PairCollator(tokenizer.pad_token_id)
        short = [i for i in range(len(self.ds)) if self.ds[i].tail_len < cfg.direction.n_tokens]
        if short:  # the loss reads the last n_tokens, which must be the same text on both sides of a pair
            pair = (train_pairs + val_pairs)[short[0]]
            raise InputError(f"{len(short)} pair(s) share fewer than --direction.n-tokens={cfg.direction.n_tokens} "
                             f"final tokens between positive and negative (e.g. {pair.positive[-40:]!r} vs "
                             f"{pair.negative[-40:]!r}); every pair must end in the same text (a shared suffix), "
                             "or lower --direction.n-tokens")
        #: the rows the inner loss reads: the persona pairs, or their persona-free versions (--loss-inputs neutral);
        #: the direction and its reference always come from the persona pairs (self.ds)
        self.loss_ds = self.ds
        if cfg.loss_inputs == "neutral" and cfg.objective == "inner":
            self.loss_ds = neutral_rows(tokenizer, train_pairs + val_pairs, self.ds.items, cfg.data.system,
                                        cfg.outputs.user)
            short = [r.index for r in self.loss_ds if r.tail_len < cfg.direction.n_tokens]
            if short:
                raise InputError(f"{len(short)} persona-free row(s) share fewer than --direction.n-tokens="
                                 f"{cfg.direction.n_tokens} final tokens with their persona prompts; lower "
                                 "--direction.n-tokens")
        self.fingerprint = run_identity(cfg, self.model, train_pairs, val_pairs)

        attach_kind(self.model, cfg.method, cfg.adapter)  # innerpissa, lora or vector: same modules, same loss
        self.selection: dict[str, Tensor] | None = None
        if cfg.method == "innerpissa" and cfg.adapter.select == "data":  # a pure function of the training pairs
            from innerpissa.adapter.select import select_adapter_directions

            self.selection = select_adapter_directions(
                self.model, [b.to(self.device) for b in _batches(self.ds, self.train_idx, cfg.batch_size, self.collate)],
                cfg.direction.n_tokens)
        self.params = adapter_parameters(self.model)
        self.ref: Reference | None = None
        #: the output objective (train/outputs.py) when cfg.objective is one; None: the inner loss below
        self.outputs: OutputObjective | None = None
        if cfg.objective != "inner":
            self.outputs = OutputObjective(
                cfg.objective, cfg.outputs, self.model, tokenizer, train_pairs + val_pairs, len(train_pairs),
                cfg.data.system, cfg.batch_size, self.device, cfg.shared_prefix, cfg.frozen_prefix,
                pair_batches=[b.to(self.device) for b in _batches(self.ds, self.train_idx, cfg.batch_size, self.collate)],
                n_tokens=cfg.direction.n_tokens)

    # ---------------------------------------------------------------- the maths of one micro-batch

    def _run(self, fwd: TrainForward, cs: tuple[float, ...], cap: HiddenCapture) -> dict[float, tuple[Tensor, Tensor]]:
        """Per c of `cs` (one forward for all): (projections [rows], tail log-probs [rows, width])."""
        m, rows, ref = len(cs), fwd.rows, self.ref
        logp = fwd.run(cs)
        proj = projections(cap.hidden[ref.point.key], fwd.mask(m), ref.basis, ref.direction,
                           fwd.batch.pair_index.repeat(m), ref.n_tokens)
        return {c: (proj[i * rows:(i + 1) * rows], logp[i * rows:(i + 1) * rows]) for i, c in enumerate(cs)}

    def losses(self, batch: PairBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and named terms of one micro-batch (c = +1 and -1 against the c = 0 reference)."""
        if self.outputs is not None:
            return self.outputs.losses(batch, self.cfg.batch_pm)
        width = tail_width(batch)
        cfg = self.cfg
        with HiddenCapture(self.model, [self.ref.point]) as cap:
            fwd = TrainForward(self.model, batch, cfg.shared_prefix, cfg.frozen_prefix)
            if cfg.cache_reference and self.loss_ds is self.ds:  # cached for the persona rows only
                proj0, logp0 = self.ref.batch_values(batch, width)
            else:
                with torch.no_grad():  # what the cache replaces: a third forward at c = 0
                    proj0, logp0 = self._run(fwd, (0.0,), cap)[0.0]
            results: dict[float, tuple[Tensor, Tensor]] = {}
            for cs in ([COEFFS] if cfg.batch_pm else [(c,) for c in COEFFS]):
                results.update(self._run(fwd, cs, cap))
        mask = _tail_mask(batch, width, cfg.loss.mask_tokens)
        s = {c: target_stat(p, cfg.loss_target) for c, (p, _) in results.items()}
        s0 = target_stat(proj0, cfg.loss_target)
        if cfg.loss_target == "shift_moved":  # measured from where c = 0 leaves the states
            s, s0 = {c: v - s0 for c, v in s.items()}, torch.zeros_like(s0)
        return combine(cfg.loss, s, s0, {c: lp for c, (_, lp) in results.items()}, logp0, mask,
                       scale=self.scale)

    # ---------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss terms on the validation pairs, pair-weighted; `val_ordered_fwd` is the fraction of pairs
        ordered g(-1) < 0 < g(+1) (the batch fractions weighted by batch size are exactly that). An output
        objective validates itself (`OutputObjective.validate`)."""
        if self.outputs is not None:
            return self.outputs.validate()
        sums: dict[str, float] = {}
        n = 0
        for batch in _batches(self.loss_ds, self.val_idx, self.cfg.batch_size, self.collate):
            _, terms = self.losses(batch.to(self.device))
            k = batch.n_pairs
            for key, v in terms.items():
                sums[key] = sums.get(key, 0.0) + float(v) * k
            n += k
        return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}

    # ---------------------------------------------------------------- the loop

    def _setup_reference(self) -> None:
        """What the loss compares against, made once: the inner loss's frozen direction and c = 0 reference, or an
        output objective's completions and their c = 0 log-probs."""
        if self.outputs is not None:
            self.outputs.setup()
            self.scale = 1.0
            return
        cfg, d = self.cfg, self.cfg.direction
        tb = _batches(self.ds, self.train_idx, cfg.batch_size, self.collate)
        vb = _batches(self.ds, self.val_idx, cfg.batch_size, self.collate)
        self.ref = build_reference(self.model, [b.to(self.device) for b in tb], [b.to(self.device) for b in vb],
                                   len(self.ds), d.depth, d.module, d.where, d.basis, d.basis_rank, d.method,
                                   d.n_tokens, dims=d.dims, dims_rule=d.dims_rule)
        sep0 = self.ref.sep0[self.train_idx]
        self.scale = float(sep0.abs().mean().clamp(min=1e-6))

    def fit(self) -> TrainResult:
        """Train (or continue a checkpoint of) this run, then calibrate and write the adapter and summary. A fresh
        run takes over its folder only once its first step succeeded; Ctrl-C keeps a checkpoint of every
        completed step."""
        cfg = self.cfg
        self.ckpt_dir = self.out / "checkpoint"
        self.state = state = Checkpoint()
        self.resumed = cfg.resume and (self.ckpt_dir / "state.pt").exists()
        self._ckpt_step: int | None = None
        self._log: _Logger | None = None
        saved = None
        if self.resumed:
            saved = read_checkpoint_state(self.ckpt_dir)
            self._check_resume(saved, self.ckpt_dir)
            if saved.finished or (saved.epoch >= cfg.epochs and (self.out / "summary.json").exists()):
                return self._already_finished(saved)
            if self.outputs is not None:
                self.outputs.load_state_dict(saved.reference)
            else:
                self.ref = Reference.from_state_dict(saved.reference)
            self.scale = saved.scale
        else:
            self._setup_reference()  # fails on bad data or settings before the folder is touched
        steps_per_epoch = math.ceil(math.ceil(len(self._step_idx()) / cfg.batch_size) / cfg.grad_accum)
        total = max(1, steps_per_epoch * cfg.epochs)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, one_cycle(total, cfg.warmup))
        if saved is not None:
            self.state = state = load_checkpoint(self.ckpt_dir, self.params, self.opt, self.sched)
            self._ckpt_step = state.global_step
            self._folder()
        state.reference = (self.outputs or self.ref).state_dict()
        state.scale, state.fingerprint = self.scale, self.fingerprint
        self.t0 = time.time() - state.elapsed
        self.bar = _bar(total, state.global_step, cfg.progress)
        try:
            for epoch in range(state.epoch, cfg.epochs):
                self._epoch(epoch)
                if cfg.patience and state.bad_epochs >= cfg.patience:
                    break
        except KeyboardInterrupt:
            # only completed optimizer steps are in `state`; partial gradients are dropped
            self.opt.zero_grad(set_to_none=True)
            self.bar.close()
            if self._log is None:
                raise KeyboardInterrupt(f"training interrupted before its first step; nothing was written to "
                                        f"{self.out}") from None
            self._checkpoint()
            raise KeyboardInterrupt(f"training interrupted; resume with --resume (checkpoint in {self.ckpt_dir})"
                                    ) from None
        self.bar.close()
        self._folder()  # a run with zero steps still owns its folder
        try:
            result = self._finish(state, time.time() - self.t0)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted after training, before the adapter was written; rerun with "
                                    f"--resume to finish (checkpoint in {self.ckpt_dir})") from None
        state.finished = True
        self._checkpoint()
        return result

    def _epoch(self, epoch: int) -> None:
        """The optimizer steps of one epoch (from where a resumed run stopped), then validation and a checkpoint."""
        cfg, state = self.cfg, self.state
        idx = self._step_idx()
        order = [idx[i] for i in epoch_order(len(idx), cfg.seed, epoch)]
        batches = (self.outputs.batches(order) if self.outputs is not None
                   else _batches(self.loss_ds, order, cfg.batch_size, self.collate))
        batches = batches[self.acc.process_index::self.acc.num_processes]
        for b in range(state.batch_in_epoch, len(batches), cfg.grad_accum):
            group = batches[b:b + cfg.grad_accum]
            terms, gnorm = self._step(group, epoch)
            state.global_step += 1
            state.batch_in_epoch = b + len(group)
            self._folder().log({"step": state.global_step, "epoch": epoch, "lr": self.sched.get_last_lr()[0],
                                "grad_norm": gnorm, **terms})
            self.bar.update(1)
            self.bar.set_postfix({k: f"{terms[k]:.3g}" for k in ("total", "proj+1", "proj-1", "coh+1", "mono")
                                  if k in terms})
        val = self.validate()
        if not all(math.isfinite(v) for v in val.values()):
            self._diverged("validation became non-finite", epoch, state.global_step, val)
        val_loss = val.get("val_total", float("nan"))
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        if not (val_loss >= state.best_val):  # improved (NaN never counts as worse)
            state.best_val, state.bad_epochs = val_loss, 0
            state.best_params = [p.detach().clone() for p in self.params]
        else:
            state.bad_epochs += 1
        self._folder().log({"step": state.global_step, "epoch": epoch, **val})
        state.history.append({"epoch": epoch, **val})
        self._checkpoint()

    def _step(self, group: list[PairBatch], epoch: int) -> tuple[dict[str, float], float]:
        """One optimizer step over `group` (gradient accumulation); its mean loss terms and gradient norm."""
        step = self.state.global_step
        terms_sum: dict[str, float] = {}
        for batch in group:
            loss, terms = self.losses(batch.to(self.device))
            if not torch.isfinite(loss):
                self._diverged(f"loss became {float(loss.detach())}", epoch, step,
                               {k: round(float(v), 4) for k, v in terms.items()})
            (loss / len(group)).backward()
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v) / len(group)
        if self.acc.num_processes > 1:
            for p in self.params:
                p.grad = self.acc.reduce(p.grad, reduction="mean")
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip if self.cfg.clip > 0 else float("inf"))
        if not torch.isfinite(gnorm):
            self._diverged(f"gradient norm became {float(gnorm)}", epoch, step, terms_sum)
        self.opt.step()
        if not _all_finite(self.params):
            self._diverged("an adapter parameter became non-finite", epoch, step, terms_sum)
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return terms_sum, float(gnorm)

    def _step_idx(self) -> list[int]:
        """What an epoch draws its batches from: the training pairs, or an output objective's training items
        (the pairs whose completions are not empty)."""
        return self.outputs.train_idx if self.outputs is not None else self.train_idx

    def _folder(self) -> _Logger:
        """The run's metrics log; the first call takes over the folder (a fresh run clears what --overwrite or
        a checkpoint-less --resume left there) and writes config.json."""
        if self._log is None:
            main = self.acc.is_main_process
            if not self.resumed and main:
                if holds_run(self.out):
                    clear_run(self.out)  # --overwrite (checked up front), or --resume without a checkpoint
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "metrics.jsonl").write_text("")
            if main:
                atomic_write_json(self.out / "config.json", self.cfg.to_dict())
            self._log = _Logger(self.out / "metrics.jsonl", self.cfg, self.state.global_step)
        return self._log

    def _checkpoint(self) -> None:
        self.state.elapsed = time.time() - self.t0
        if self.acc.is_main_process:
            save_checkpoint(self.ckpt_dir, self.state, self.params, self.opt, self.sched)
        self._ckpt_step = self.state.global_step

    # ---------------------------------------------------------------- resume and divergence

    def _check_resume(self, saved: Checkpoint, ckpt_dir: Path) -> None:
        """Refuse a checkpoint written by a run with other settings, naming every field that differs."""
        if saved.fingerprint is None:
            import warnings

            warnings.warn(f"checkpoint in {ckpt_dir} predates run fingerprints; its settings cannot be checked",
                          stacklevel=3)
            return
        diff = fingerprint_diff(saved.fingerprint, self.fingerprint)
        if diff:
            raise ResumeMismatch(f"--resume: the checkpoint in {ckpt_dir} was written by a run with other settings "
                                 f"({'; '.join(diff)}); resume with the same options, or use --overwrite or "
                                 "another --out to start a new run")

    def _already_finished(self, saved: Checkpoint) -> TrainResult:
        path = self.out / "summary.json"
        summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        return TrainResult(self.out, self.out / "adapter", summary, already_finished=True)

    def _diverged(self, what: str, epoch: int, step: int, detail: dict) -> None:
        bad = sorted(k for k, v in detail.items() if not math.isfinite(float(v)))
        shown = f"non-finite: {', '.join(bad)}" if bad else "terms finite"
        where = (f"the last good checkpoint (step {self._ckpt_step}) is in {self.out / 'checkpoint'}"
                 if self._ckpt_step is not None else
                 "no checkpoint of this run was written yet (it is written at the end of each epoch)")
        raise TrainingDiverged(f"{what} at epoch {epoch}, step {step} ({shown}); {where}. No adapter was "
                               "written. Lower --lr or --adapter.max-angle and rerun with --overwrite or another --out.")

    def _inner_summary(self, final_val: dict) -> dict:
        """Beside the reference: the gate of what the loss asks, validation separations s(-1) < s0 < s(+1)."""
        s = [final_val.get(f"val_sep{c}") for c in ("-1", "0", "+1")]
        return {"val_separation_ordered": None if None in s else bool(s[0] < s[1] < s[2]),
                "ref_separation_mean": float(self.ref.sep0[self.train_idx].mean()),
                "ref_separation_std": float(self.ref.sep0[self.train_idx].std()),
                "val_ordered_pct": (None if final_val.get("val_ordered_fwd") is None
                                    else round(100 * float(final_val["val_ordered_fwd"]), 2)),
                "loss_point": self.ref.point.key}

    def _output_summary(self, final_val: dict) -> dict:
        """The output objective's gate: are the validation margins ordered m(-1) < m(0) < m(+1)?"""
        m = [final_val.get(f"val_margin{c}") for c in ("-1", "+0", "+1")]
        ordered = None if None in m else bool(m[0] < m[1] < m[2])
        return {"train_items": len(self.outputs.train_idx), "items_dropped_empty": self.outputs.dropped,
                "val_ordered_pct": (None if final_val.get("val_ordered") is None
                                    else round(100 * float(final_val["val_ordered"]), 2)),
                "val_margins_ordered": ordered}

    def _finish(self, state: Checkpoint, seconds: float) -> TrainResult:
        cfg = self.cfg
        if state.best_params is not None and cfg.patience:
            with torch.no_grad():
                for p, best in zip(self.params, state.best_params, strict=True):
                    p.copy_(best)
        if not _all_finite(self.params):
            self._diverged("an adapter parameter is non-finite", state.epoch, state.global_step, {})
        final_val = state.history[-1] if state.history else {}
        calibration = None
        if cfg.calibrate:
            from innerpissa.eval.calibration import calibrate

            # an output objective's sign is "+1 prefers the positive persona's completion" by construction: the
            # probe is reported as a check, never used to flip it
            mode = "never" if self.outputs is not None else cfg.calibrate_flip
            calibration = calibrate(self.model, self.tok, batch_size=cfg.batch_size, mode=mode,
                                    builtin=cfg.data.builtin)
            if calibration["flipped"]:  # the ordering flips with the sign
                final_val = {**final_val, "val_ordered_fwd": final_val.get("val_ordered_rev"),
                             "val_ordered_rev": final_val.get("val_ordered_fwd")}
        summary = {
            "model": cfg.model, "method": cfg.method, "objective": cfg.objective,
            "train_pairs": len(self.train_idx), "val_pairs": len(self.val_idx),
            "epochs_run": state.epoch, "steps": state.global_step, "train_seconds": round(seconds, 2),
            "final_validation": final_val, "calibration": calibration, "fingerprint": self.fingerprint,
            **(self._inner_summary(final_val) if self.outputs is None else self._output_summary(final_val)),
        }
        gate = summary.get("val_separation_ordered", summary.get("val_margins_ordered"))
        if gate is False:
            import warnings

            what = ("separations s(-1) < s0 < s(+1)" if self.outputs is None else "margins m(-1) < m(0) < m(+1)")
            warnings.warn(f"{self.out}: the objective's validation gate is not met (the validation {what} are not "
                          "ordered): the loss did not move what it asks for on held-out pairs", stacklevel=2)
        adapter_path = self.out / "adapter"
        if self.acc.is_main_process:  # either kind (InnerPiSSA or LoRA(c)) through the one save path
            save_adapter(self.model, adapter_path, extra={"training": summary, "config": cfg.to_dict()},
                         coeff_range=(min(COEFFS), max(COEFFS)))
            atomic_write_json(self.out / "summary.json", summary)
            if self.outputs is not None:  # what the output objective trained on, readable
                atomic_write_json(self.out / "completions.json", self.outputs.readable())
        return TrainResult(self.out, adapter_path, summary)


def _all_finite(params: list[Tensor]) -> bool:
    """Whether every parameter is finite (one device sync for all of them)."""
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()) if params else True


def one_cycle(total: int, warmup: float, floor: float = 0.02):
    """LR factor per step: linear warm-up to 1 over `warmup` of the steps, then cosine down to `floor`
    (torch's OneCycleLR divides by zero on very short runs)."""
    w = max(1, round(warmup * total))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = min(1.0, (step - w) / max(1, total - w))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def target_stat(proj: Tensor, target: str) -> Tensor:
    """Per pair, what the projection term moves: `separation` pos - neg (METHOD), or `shift` (pos + neg) / 2."""
    if target == "separation":
        return proj[0::2] - proj[1::2]
    if target in ("shift", "shift_moved"):
        return (proj[0::2] + proj[1::2]) / 2
    raise ValueError(f"unknown loss target {target!r}; use 'separation', 'shift' or 'shift_moved'")


def _tail_mask(batch: PairBatch, width: int, n: int = 0) -> Tensor:
    """Bool [rows, width]: which of the last `width` columns the gap and coherence terms read: the last `n`
    shared-tail tokens of each row (the end of the suffix), or the whole shared tail when n <= 0."""
    cols = torch.arange(width, device=batch.tail_len.device)
    keep = batch.tail_len if n <= 0 else batch.tail_len.clamp(max=n)
    return cols[None, :] >= (width - keep)[:, None]


def _metric_lines(path: Path) -> list[str]:
    """The JSON lines of a run's metrics.jsonl. A torn last line (the run was killed while appending it) is
    dropped with a warning; a damaged line before it is an error naming the file and line."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    good = []
    for k, (i, ln) in enumerate(numbered):
        try:
            ok = isinstance(json.loads(ln), dict)
        except json.JSONDecodeError:
            ok = False
        if ok:
            good.append(ln)
        elif k == len(numbered) - 1:
            import warnings

            warnings.warn(f"{path}:{i}: dropped a torn last line (the run was stopped while writing it)",
                          stacklevel=3)
        else:
            raise InputError(f"{path}:{i}: not a JSON object line; delete that line (or the file) and resume again")
    return good


class _Logger:
    """Appends JSON lines (and to wandb when asked); on resume drops lines past the checkpoint."""

    def __init__(self, path: Path, cfg: TrainConfig, step: int):
        self.path = path
        if path.exists():
            kept = [ln for ln in _metric_lines(path) if json.loads(ln).get("step", 0) <= step]
            path.write_text("".join(ln + "\n" for ln in kept))
        self.wandb = None
        if cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("--wandb needs the wandb package: pip install 'innerpissa[wandb]'") from e
            self.wandb = wandb.init(project=cfg.wandb, config=cfg.to_dict(), resume="allow")

    def log(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(dumps_strict(row, indent=None) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=row["step"])


def _bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def train(cfg: TrainConfig, model=None, tokenizer=None) -> TrainResult:
    """Train an InnerPiSSA adapter as configured; returns where it was written and a summary.

    The run folder is locked for the whole run (a second process training into it fails at once, naming
    this one's pid), and a SIGTERM stops the run like Ctrl-C (checkpoint, then KeyboardInterrupt)."""
    import os

    torch.manual_seed(cfg.seed)
    if cfg.out is None:
        cfg.out = default_out(str(getattr(cfg, "concept", None) or cfg.data.builtin or "run"))
    check_train_numbers(cfg)
    check_out(Path(cfg.out), cfg.resume, cfg.overwrite)  # before the folder is created for its lock
    # under `accelerate launch` every process runs this: the main one (RANK 0) owns the folder
    lock = run_lock(Path(cfg.out)) if os.environ.get("RANK", "0") == "0" else nullcontext()
    with lock, sigterm_as_interrupt():
        return Trainer(cfg, model, tokenizer).fit()
