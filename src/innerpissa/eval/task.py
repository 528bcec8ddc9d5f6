"""The evaluation seam: a `Task` scores steerers on fixed items, caches what it scored, and writes the report.

`compare`, `ablate` and `eval` are each one loop over it: `task.base()` (c = 0, the unsteered model, scored
once), then per method or variant `task.score(steerer, coeffs, seed)`, then `task.report(out, frames, meta)`.
Two tasks implement it: `DilemmaTask` (DailyDilemmas Yes/No log-odds, METHOD section 7) and
`GenerationTask` (greedy continuations of held-out or user prompts scored by a concept scorer, section 11).
A task is bound to its items (a split of the prompts, a sample of dilemmas), so scoring the same steerers on
another split is another task; `score` takes any coefficient list, so a caller may choose each method's
coefficients itself.

One cache (`ScoreCache`): one JSON file per scored sweep, named by a hash of everything the numbers depend on:
the base model (config and weights, `models.model_identity`), the tokenizer, the task's items and settings,
the steerer's `fingerprint()` and the coefficients. The file repeats that key; an entry that cannot be read
or holds another key is recomputed with a warning naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from innerpissa.data.chat import DEFAULT_SYSTEM
from innerpissa.eval.harness import INSTRUCTION, PREFILL, QUESTION, evaluate
from innerpissa.fileio import atomic_write_text
from innerpissa.models import model_identity, tokenizer_identity
from innerpissa.steering import NoSteering, Steerer

CACHE_FORMAT = 1


class Task(Protocol):
    """An evaluation every command runs the same way (module doc)."""

    model: Any
    tok: Any

    def base(self) -> pd.DataFrame:
        """The unsteered model (c = 0), scored once and shared by every method and seed."""

    def score(self, steerer: Steerer, coeffs: Sequence[float], seed: int = 0) -> pd.DataFrame:
        """`steerer` at `coeffs`, one row per item and coefficient, labelled with its name and `seed`."""

    def report(self, out: Path, frames: Sequence[pd.DataFrame], meta: dict[str, object]) -> dict[str, Path]:
        """The tables, summary and plot of the scored frames in `out`; `meta` heads the summary."""

    def describe(self) -> dict[str, object]:
        """What was scored (items, settings), for the summary's head."""


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def frame_to_json(df: pd.DataFrame, key: dict) -> str:
    """A frame as JSON with its key, columns and dtypes (floats exact, lists and strings kept)."""
    return json.dumps({"format": CACHE_FORMAT, "key": key, "columns": list(df.columns),
                       "dtypes": [str(t) for t in df.dtypes], "data": [df[c].tolist() for c in df.columns]},
                      default=str)


def frame_from_json(text: str, key: dict) -> pd.DataFrame:
    """The frame `frame_to_json` wrote; ValueError when it is damaged or was written for another key."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        raise ValueError("not a score cache file of this version")
    if obj.get("key") != json.loads(json.dumps(key, default=str)):
        raise ValueError("it holds the scores of other settings")
    cols, dtypes, data = obj["columns"], obj["dtypes"], obj["data"]
    if not len(cols) == len(dtypes) == len(data) or len({len(v) for v in data}) > 1:
        raise ValueError("its columns are incomplete")
    return pd.DataFrame({c: pd.Series(v, dtype=None if t == "object" else t)
                         for c, t, v in zip(cols, dtypes, data, strict=True)})


@dataclass
class ScoreCache:
    """Scored sweeps on disk under `folder` (None: nothing cached), keyed by the task's `key` plus the
    steerer's fingerprint and the coefficients. Steerers without a fingerprint are scored every time."""

    folder: Path | None
    key: dict[str, Any]

    def get(self, steerer: Steerer, coeffs: Sequence[float], compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        fp = steerer.fingerprint()
        if self.folder is None or not fp:
            return compute()
        key = {**self.key, "steerer": fp, "coeffs": [float(c) for c in coeffs]}
        path = Path(self.folder) / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', steerer.name)}_{_digest(key)}.json"
        if path.exists():
            try:
                return frame_from_json(path.read_text(encoding="utf-8"), key)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                warnings.warn(f"score cache entry {path} is unusable ({e}); recomputing it", stacklevel=3)
        df = compute()
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, frame_to_json(df, key))
        return df


def model_key(model, tok) -> dict[str, Any]:
    """The base model's part of every cache key: what it computes, not where it was loaded from."""
    return {**model_identity(model), "tokenizer": tokenizer_identity(tok)}


def _labelled(df: pd.DataFrame, steerer: Steerer, seed: int) -> pd.DataFrame:
    return df.assign(method=steerer.name, seed=seed)


def score_with_base(task: Task, base: pd.DataFrame, steerer: Steerer, coeffs: Sequence[float], seed: int,
                    train_seconds: float = 0.0) -> pd.DataFrame:
    """`steerer` scored on `task` at `coeffs`, its c = 0 rows (when `coeffs` has 0) taken from `base` (the
    unsteered frame scored once) wherever c = 0 is the bare base model: every weight or hook method, and
    prompting that keeps the default system message at c = 0."""
    shared = steerer.system_prompt(0.0, DEFAULT_SYSTEM) == DEFAULT_SYSTEM
    todo = [c for c in coeffs if c != 0 or not shared]
    parts = [base.assign(method=steerer.name, seed=seed)] if shared and any(c == 0 for c in coeffs) else []
    if todo:
        parts.append(task.score(steerer, todo, seed))
    if not parts:
        raise ValueError("no coefficients to score")
    return pd.concat(parts, ignore_index=True).assign(train_seconds=train_seconds)


# ------------------------------------------------------------------------------------------------ dilemmas


@dataclass
class DilemmaTask:
    """DailyDilemmas rows scored by Yes/No log-odds (`harness.evaluate`) under `settings` (an `EvalSettings`:
    batch size, validity, budgets, target, bootstrap); `sample_seed` seeds the bootstrap of the report."""

    model: Any
    tok: Any
    rows: pd.DataFrame
    axes: list[str]
    settings: Any
    cache_dir: Path | None = None
    sample_seed: int = 0
    progress: bool = False
    cache: ScoreCache = field(init=False)

    def __post_init__(self) -> None:
        items = self.rows[["dilemma_idx", "action_type", "dilemma_situation", "action",
                           *[c for c in self.rows.columns if c.startswith("label:")]]]
        self.cache = ScoreCache(self.cache_dir, {
            "task": "dilemmas", **model_key(self.model, self.tok), "rows": _digest(items.to_json(orient="split")),
            "axes": list(self.axes), "prompt": [DEFAULT_SYSTEM, INSTRUCTION, QUESTION, PREFILL],
            "batch_size": self.settings.batch_size, "min_mass": self.settings.min_mass})

    def base(self) -> pd.DataFrame:
        return self.score(NoSteering(), [0.0])

    def score(self, steerer: Steerer, coeffs: Sequence[float], seed: int = 0) -> pd.DataFrame:
        s = self.settings
        return _labelled(self.cache.get(steerer, coeffs, lambda: evaluate(
            self.model, self.tok, self.rows, steerer, list(coeffs), seed=seed, batch_size=s.batch_size,
            min_mass=s.min_mass, axes=self.axes, progress=self.progress)), steerer, seed)

    def describe(self) -> dict[str, object]:
        from innerpissa.eval.choices import choice_ids

        return {"rows": self.settings.rows_info(self.rows, self.sample_seed),
                "choice tokens": choice_ids(self.tok).describe(self.tok)}

    def report(self, out: Path, frames: Sequence[pd.DataFrame], meta: dict[str, object],
               examples: pd.DataFrame | None = None) -> dict[str, Path]:
        """Tables per coefficient, per method at matched coherence and over seeds; prints the headline."""
        from innerpissa.eval.report import headline_table, markdown_table, write_report
        from innerpissa.eval.summary import coeff_table, method_table, seed_table

        s, res = self.settings, pd.concat(frames, ignore_index=True)
        coeff_tab = coeff_table(res, s.target, self.axes, n_boot=s.n_boot, seed=self.sample_seed)
        methods = method_table(res, coeff_tab, s.target, s.max_dnll, s.min_valid, n_boot=s.n_boot,
                               seed=self.sample_seed)
        meta = {**meta, "coherence budget": f"ΔNLL <= {s.max_dnll}, valid >= {s.min_valid:.0%}"}
        paths = write_report(out, res, coeff_tab, methods, seed_table(methods), s.target, meta, examples,
                             s.max_dnll, s.min_valid)
        paths["sample"] = Path(out) / "sample.csv"
        print(markdown_table(headline_table(methods)))
        return paths


# ---------------------------------------------------------------------------------------------- generation


@dataclass
class GenerationTask:
    """Greedy continuations of `prompts` scored by `scorer` (`generation.evaluate_generation`) under `settings`
    (a `GenSettings`: tokens, batch, fluency budget, validity gate); `n_boot` resamples for the report's CIs.

    `scorers` (name -> scorer, the headline `scorer` first; default: the headline alone) each give a column
    `score:<name>`; only the headline's scores are cached (the others are lexicons, recomputed from the texts).
    `valid` is recomputed after the cache with the repetition gate `settings.max_rep3` (`gate_validity`)."""

    model: Any
    tok: Any
    prompts: list[str]
    scorer: Any
    settings: Any
    cache_dir: Path | None = None
    n_boot: int = 1000
    source: str = ""
    scorers: dict[str, Any] = field(default_factory=dict)
    cache: ScoreCache = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        if not self.scorers:
            self.scorers = {_scorer_label(self.scorer): self.scorer}
        if next(iter(self.scorers.values())) is not self.scorer:
            raise ValueError("GenerationTask.scorers must start with the headline scorer")
        self.cache = ScoreCache(self.cache_dir, {
            "task": "generation", **model_key(self.model, self.tok), "prompts": _digest(self.prompts),
            "system": DEFAULT_SYSTEM, "scorer": getattr(self.scorer, "identity", self.scorer.name),
            "max_new_tokens": s.max_new_tokens, "batch": s.batch})

    @classmethod
    def load(cls, model, tok, settings, split: str, concept: str, cache_dir: Path | None = None,
             n_boot: int = 1000, prompts_file: Path | None = None) -> GenerationTask:
        """The task of `settings` (`prompts_file`, else settings.prompts_file, else the built-in `split`; the
        scorers of --gen.scorer / --gen.scorers) for `concept`."""
        from innerpissa.eval.gen_metrics import make_scorer, scorer_specs
        from innerpissa.eval.generation import load_prompts

        prompts_file = prompts_file if prompts_file is not None else settings.prompts_file
        prompts = load_prompts(split, prompts_file, settings.n_prompts)
        source = f"{prompts_file}" if prompts_file is not None else f"{split} split"
        scorers = {spec: make_scorer(spec, concept)
                   for spec in scorer_specs(settings.scorer, getattr(settings, "scorers", None), concept)}
        return cls(model, tok, prompts, next(iter(scorers.values())), settings, cache_dir, n_boot,
                   f"{len(prompts)} ({source})", scorers)

    def base(self) -> pd.DataFrame:
        return self.score(NoSteering(), [0.0])

    def score(self, steerer: Steerer, coeffs: Sequence[float], seed: int = 0) -> pd.DataFrame:
        from innerpissa.eval.generation import evaluate_generation

        s = self.settings
        return self._finish(_labelled(self.cache.get(steerer, coeffs, lambda: evaluate_generation(
            self.model, self.tok, self.prompts, steerer, coeffs, self.scorer, s.max_new_tokens,
            max_batch=s.batch)), steerer, seed))

    def _finish(self, df: pd.DataFrame) -> pd.DataFrame:
        """Every scorer's column and the validity gate, on a scored (possibly cached) frame."""
        from innerpissa.eval.gen_metrics import DEFAULT_MAX_REP3, gate_validity
        from innerpissa.eval.matching import SCORE_PREFIX

        df = df.copy()
        for name, scorer in self.scorers.items():
            df[SCORE_PREFIX + name] = (df["score"] if scorer is self.scorer
                                       else scorer(df["continuation"].fillna("").tolist()))
        return gate_validity(df, getattr(self.settings, "max_rep3", DEFAULT_MAX_REP3))

    def on_prompts(self, split: str, prompts_file: Path | None = None) -> GenerationTask:
        """The same task (model, scorers, settings, cache folder) on the prompts of another split or file."""
        from innerpissa.eval.generation import load_prompts

        prompts = load_prompts(split, prompts_file, self.settings.n_prompts)
        source = f"{prompts_file}" if prompts_file is not None else f"{split} split"
        return replace(self, prompts=prompts, source=f"{len(prompts)} ({source})")

    def describe(self) -> dict[str, object]:
        from innerpissa.eval.gen_metrics import DEFAULT_MAX_REP3, MIN_WORDS

        gate = getattr(self.settings, "max_rep3", DEFAULT_MAX_REP3)
        return {"prompts": self.source, "new tokens": self.settings.max_new_tokens, "scorer": self.scorer.name,
                "scorers": ", ".join(f"{k} ({v.name})" for k, v in self.scorers.items()),
                "valid continuation": f">= {MIN_WORDS} words, distinct-2 >= 0.5, repeated 3-grams <= {gate:.0%} "
                                      "(invalid rows are left out of score means; NLL and distinct-2 count all rows)"}

    def report(self, out: Path, frames: Sequence[pd.DataFrame], meta: dict[str, object]) -> dict[str, Path]:
        """The old rule (`--gen.select same-split`): per-coefficient table, ranges at the largest grid |c| within
        `nll_budget` on these prompts, and the summary; prints the summary."""
        from innerpissa.eval.gen_metrics import coeff_summary, matched_range, method_summary
        from innerpissa.eval.report import write_generation_report

        s, df = self.settings, pd.concat(frames, ignore_index=True)
        tab = coeff_summary(df, n_boot=self.n_boot)
        ranges = matched_range(df, tab, s.nll_budget, s.distinct_frac, n_boot=self.n_boot)
        meta = {**meta, "fluency budget": f"NLL <= c0 + {s.nll_budget}, distinct-2 >= {s.distinct_frac:.0%} of c0"}
        paths = write_generation_report(out, df, tab, ranges, method_summary(ranges), meta)
        print(paths["summary"].read_text())
        return paths

    def report_matched(self, out: Path, matcher: Any, meta: dict[str, object], chosen_on: str = "the dev prompts",
                       headline_budget: float = 0.25) -> dict[str, Path]:
        """The dev-test protocol's report (`eval/matching.py`): per budget and scorer the headline table, the
        per-seed detail, the word attribution, the dev sweep, `pareto.png` and `dev_sweep.png`, every file
        written atomically into `out`; prints the headline tables. `matcher` holds the dev rows, the choices
        and the rows scored at them on this task's prompts. The headline and the word attribution are at the
        budget nearest `headline_budget`."""
        from innerpissa.eval import matching as mt
        from innerpissa.eval.report import write_matched_report

        dev = pd.concat(matcher.dev_frames, ignore_index=True)
        test = pd.concat(matcher.test_frames, ignore_index=True)
        choices = pd.concat(matcher.choice_frames, ignore_index=True)
        dev_tab = mt.conditions(dev)
        matched = mt.matched_results(test, choices, dev_tab, self.n_boot)
        summary = mt.method_budget_summary(matched)
        names = list(self.scorers)
        head = min(matcher.budgets, key=lambda b: abs(b - headline_budget))
        attr = top = without = None
        if "vader" in self.scorers:
            attr = mt.word_attribution(test, choices, head, mt.vader_lexicon())
            top = mt.top_words(attr)
            first = top[top["rank"] == 1]
            words = {m: g["word"].tolist() for m, g in first.groupby("method", sort=False)}
            without = mt.range_without(test, choices, head, words, self.scorers)
        s = matcher
        meta = {"protocol": f"strength per side chosen on {chosen_on}, reported on {self.source}",
                "fluency budgets": f"mean continuation NLL <= NLL(c=0) + b for b in {list(s.budgets)} nats; a side also "
                                   f"needs distinct-2 >= {s.distinct_frac:.0%} of c = 0's and >= {s.min_valid:.0%} valid",
                "dev grid": f"each method's own grid, extended by 1.5x/2x its largest |c| up to {2 ** s.extend}x while a "
                            f"side stays inside {max(s.budgets)} nats, halved up to {s.refine}x while its first point "
                            f"leaves {min(s.budgets)}; c* interpolated linearly in dev NLL at the crossing", **meta}
        paths, headline = write_matched_report(Path(out), dev, test, dev_tab, choices, matched, summary, meta, names,
                                               list(s.budgets), head, attr, top, without, head)
        print(headline)
        return paths


def _scorer_label(scorer: Any) -> str:
    """The registry name of a built-in scorer (`vader`), else the scorer's own name."""
    from innerpissa.eval.gen_metrics import SCORERS

    return next((k for k, cls in SCORERS.items() if type(scorer) is cls), scorer.name)
