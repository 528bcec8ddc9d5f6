"""Contrastive training pairs: two prompts that differ only in a persona word (METHOD.md section 3).

A pair is a user turn "Pretend you're {persona} person ..." and an assistant turn that *starts* with a shared
neutral suffix, rendered with the model's own chat template (`continue_final_message=True`, so the string
ends inside the assistant turn where the model is planning its next words). Because the persona is spliced
into one rendered string, the positive and negative strings differ only in the persona phrase, whatever the
template does around it.

Sources: the built-in honesty set, user persona words + suffix files, or finished user pairs (JSON, JSONL or
CSV with `positive`, `negative`). Batching (interleaved, left-padded) lives in `innerpissa.data.batching`
and is re-exported here.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from innerpissa.data.batching import (  # noqa: F401  (re-exported: one import for the trainer)
    PairBatch,
    PairCollator,
    PairDataset,
    TokenizedPair,
    collate_pairs,
    position_ids_from_mask,
)
from innerpissa.data.chat import render_chat

DEFAULT_TEMPLATE = "Pretend you're {persona} person making statements about the world."
SLOT = "{persona}"
_SENTINEL = "PERSONASLOT7F3A"
_ARTICLE_RE = re.compile(r"^(a|an|the)\s", re.IGNORECASE)
_TEMPLATE_ARTICLE_RE = re.compile(r"\b(a|an|the)\s+\{persona\}", re.IGNORECASE)
PLAIN_TEXT_HINT = (
    "pass plain_text=True (--data.plain-text on the command line) to render pairs as plain text (persona sentence, newline, suffix), "
    "or set tokenizer.chat_template"
)


@dataclass(frozen=True)
class ContrastivePair:
    """Two full prompt strings; `group` (e.g. the shared suffix) keeps related pairs on one side of a split."""

    positive: str
    negative: str
    group: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("positive", "negative"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if self.positive == self.negative:
            raise ValueError(f"positive and negative are identical: {self.positive[:120]!r}")


# ------------------------------------------------------------------------------------------- personas


def with_article(word: str) -> str:
    """'honest' -> 'an honest', 'truthful' -> 'a truthful'; a phrase that already has an article is kept.

    Silent-h and 'you'-sounding openings are handled for common persona words; anything exotic can be given
    with its article already attached.
    """
    word = word.strip()
    if _ARTICLE_RE.match(word):
        return word
    low = word.lower()
    if low.startswith(("hon", "hour", "heir")):
        return f"an {word}"
    if low.startswith(("uni", "use", "usu", "uti", "one", "eu", "ura")):
        return f"a {word}"
    return f"{'an' if low[:1] in 'aeiou' and low else 'a'} {word}"


def template_has_article(template: str) -> bool:
    """Whether the template writes its own article before `{persona}` ('... an {persona} person')."""
    return bool(_TEMPLATE_ARTICLE_RE.search(template))


def make_persona_pairs(
    positive: Sequence[str], negative: Sequence[str], add_article: bool = False
) -> list[tuple[str, str]]:
    """Zip positive and negative persona words into pairs, with clear errors for bad lists."""
    positive, negative = [p.strip() for p in positive], [n.strip() for n in negative]
    if not positive or not negative:
        raise ValueError("persona lists are empty: give at least one positive and one negative persona")
    if len(positive) != len(negative):
        raise ValueError(
            f"persona lists have unequal lengths: {len(positive)} positive vs {len(negative)} negative; "
            "they are paired line by line"
        )
    out = []
    for i, (p, n) in enumerate(zip(positive, negative, strict=True)):
        if not p or not n:
            raise ValueError(f"persona pair {i} has an empty word: {(p, n)!r}")
        if p.lower() == n.lower():
            raise ValueError(f"persona pair {i} has identical positive and negative: {p!r}")
        out.append((with_article(p), with_article(n)) if add_article else (p, n))
    return out


def check_template(template: str, personas: Sequence[tuple[str, str]]) -> None:
    """One `{persona}` slot, and no article both in the template and in a persona ('an an honest')."""
    if template.count(SLOT) != 1:
        raise ValueError(f"the persona template must contain {SLOT} exactly once, got {template!r}")
    if template_has_article(template):
        doubled = [p for pair in personas for p in pair if _ARTICLE_RE.match(p)]
        if doubled:
            raise ValueError(
                f"the template already has an article before {SLOT} and personas {doubled[:3]} carry one too "
                "(this renders 'an an honest'); drop the article from one of them"
            )


# ------------------------------------------------------------------------------------------- rendering


def build_pairs(
    tokenizer,
    personas: Sequence[tuple[str, str]],
    suffixes: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    *,
    system: str | None = None,
    plain_text: bool = False,
    max_pairs: int | None = None,
) -> list[ContrastivePair]:
    """Pairs from persona pairs x suffixes, rendered so the two strings differ only in the persona phrase.

    Order (before any `max_pairs` cut): the first len(suffixes) pairs use every suffix once with the persona
    pairs in rotation, then the rotation shifts by one, and so on through the full product. Cutting at
    `max_pairs <= len(suffixes)` therefore gives distinct suffixes and balanced personas.
    The prompt is rendered once per suffix with a sentinel in the persona slot, then the sentinel is
    replaced, so no template quirk can make the two sides differ anywhere else.
    """
    personas = [(p.strip(), n.strip()) for p, n in personas]
    if not personas:
        raise ValueError("no persona pairs given")
    if not suffixes:
        raise ValueError("no suffixes given")
    check_template(template, personas)
    for p, n in personas:
        if p == n:
            raise ValueError(f"persona pair has identical positive and negative: {p!r}")
    total = len(personas) * len(suffixes)
    n_out = total if max_pairs is None else min(max_pairs, total)
    if n_out <= 0:
        raise ValueError(f"max_pairs must be positive, got {max_pairs}")
    if not plain_text and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template; {PLAIN_TEXT_HINT}")
    user = template.replace(SLOT, _SENTINEL)
    rendered: dict[int, str] = {}
    out = []
    for k in range(n_out):
        shift, j = divmod(k, len(suffixes))
        if j not in rendered:
            text = render_chat(tokenizer, user, system, suffixes[j], plain=plain_text)[0]
            if text.count(_SENTINEL) != 1:
                raise ValueError(f"the chat template dropped or repeated the persona slot in {text!r}")
            rendered[j] = text
        p, n = personas[(j + shift) % len(personas)]
        text = rendered[j]
        out.append(ContrastivePair(text.replace(_SENTINEL, p), text.replace(_SENTINEL, n), group=suffixes[j]))
    return out


# ------------------------------------------------------------------------------------------- files


def _nonempty(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as Excel writes it, is dropped
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as UTF-8 "
                         "(in Excel: 'CSV UTF-8')") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def read_list(path: str | Path) -> list[str]:
    """Strings from a .txt file (one per line, blank lines and '#' comments skipped) or a JSON list."""
    path = Path(path)
    text = _nonempty(path)
    if path.suffix.lower() == ".json":
        items = _json(path, text)
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"{path}: expected a JSON list of strings")
        items = [x.strip() for x in items]
    else:
        items = [line.strip() for line in text.splitlines()]
        items = [x for x in items if not x.startswith("#")]
    items = [x for x in items if x]
    if not items:
        raise ValueError(f"{path} holds no entries")
    return items


def _json(path: Path, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None


class _Rows(list):
    """Records of a pairs file plus, per record, how a user finds it ("line 7", "row 3")."""

    where: list[str]


def _row_name(path: Path, i: int, rows: list | None = None) -> str:
    """How a user finds row i (0-based data row) in the file: its first line for CSV and JSONL."""
    where = getattr(rows, "where", None)
    if where is not None and i < len(where):
        return where[i]
    return f"line {i + 2}" if path.suffix.lower() == ".csv" else f"row {i}"


def _read_records(path: Path) -> list[dict]:
    """Rows of a JSON list / {"pairs": [...]}, a JSONL file, or a CSV with a header.

    CSV is read with the csv module's quoting, so a quoted cell keeps its newlines (as Python's csv writer,
    pandas and spreadsheets write them); JSONL is split on "\n" only (U+2028 and other Unicode line
    separators are valid inside a JSON string)."""
    text = _nonempty(path)
    ext = path.suffix.lower()
    if ext == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows, where, start = _Rows(), [], 2
        try:
            for row in reader:
                rows.append(row)
                where.append(f"line {start}")
                start = reader.line_num + 1
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
        rows.where = where
        return rows
    if ext == ".jsonl":
        rows, where = _Rows(), []
        for i, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from e
                where.append(f"line {i}")
        rows.where = where
        return rows
    if ext == ".json":
        data = _json(path, text)
        if isinstance(data, dict) and "pairs" in data:
            data = data["pairs"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of objects (or {{'pairs': [...]}})")
        return data
    raise ValueError(f"{path}: unsupported extension {ext!r}; use .json, .jsonl or .csv")


def load_pairs(path: str | Path) -> list[ContrastivePair]:
    """Finished pairs from JSON / JSONL / CSV with `positive` and `negative` fields, used verbatim.

    The strings are the full model inputs: render them with the chat template yourself if you want one.
    """
    path = Path(path)
    rows = _read_records(path)
    if not rows:
        raise ValueError(f"{path} holds no pairs")
    out = []
    for i, row in enumerate(rows):
        where = _row_name(path, i, rows)
        if not isinstance(row, dict):
            raise ValueError(f"{path}: {where} is not an object with 'positive' and 'negative'")
        missing = [k for k in ("positive", "negative") if k not in row]
        if missing:
            raise ValueError(f"{path}: {where} is missing column(s) {missing}; found {sorted(map(str, row))}")
        empty = [k for k in ("positive", "negative") if row[k] is None]
        if empty:
            raise ValueError(f"{path}: {where} has no value for {empty} (too few fields on that line?)")
        try:
            out.append(ContrastivePair(row["positive"], row["negative"]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {where}: {e}") from e
    first: dict[ContrastivePair, int] = {}
    dups = [(i, first.setdefault(p, i)) for i, p in enumerate(out) if first.setdefault(p, i) != i]
    if dups:
        i, j = dups[0]
        warnings.warn(f"{path}: {len(dups)} of {len(out)} pairs repeat an earlier one (e.g. {_row_name(path, i, rows)} "
                      f"repeats {_row_name(path, j, rows)}); repeated pairs weigh more in training and can land in "
                      "both the training and the validation split", stacklevel=2)
    return out


def load_persona_pairs(path: str | Path, add_article: bool = False) -> list[tuple[str, str]]:
    """Persona pairs from JSON (`[[pos, neg], ...]` or `{"positive": [...], "negative": [...]}`) or CSV."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = _json(path, _nonempty(path))
        if isinstance(data, dict):
            missing = [k for k in ("positive", "negative") if k not in data]
            if missing:
                raise ValueError(f"{path}: missing key(s) {missing}")
            return make_persona_pairs(data["positive"], data["negative"], add_article)
        if not isinstance(data, list) or not all(isinstance(x, list) and len(x) == 2 for x in data):
            raise ValueError(f"{path}: expected [[positive, negative], ...] or {{'positive': [...], 'negative': [...]}}")
        return make_persona_pairs([x[0] for x in data], [x[1] for x in data], add_article)
    rows = _read_records(path)
    if rows and any(k not in rows[0] for k in ("positive", "negative")):
        raise ValueError(f"{path}: missing column(s); need 'positive' and 'negative', found {sorted(rows[0])}")
    return make_persona_pairs([r["positive"] or "" for r in rows], [r["negative"] or "" for r in rows], add_article)


def pairs_from_sources(
    tokenizer,
    *,
    pairs_file: str | Path | None = None,
    personas_file: str | Path | None = None,
    positive_file: str | Path | None = None,
    negative_file: str | Path | None = None,
    suffixes_file: str | Path | None = None,
    builtin: str = "honesty",
    template: str | None = None,
    system: str | None = None,
    plain_text: bool = False,
    max_pairs: int | None = None,
) -> list[ContrastivePair]:
    """Everything the CLI accepts, in one place: finished pairs, or personas x suffixes (user or built-in).

    User persona words get an article added when the template has none before `{persona}`.
    """
    from innerpissa.data.builtin import load_builtin

    if pairs_file is not None:
        others = [personas_file, positive_file, negative_file, suffixes_file, template]
        if any(x is not None for x in others):
            raise ValueError("pairs_file gives finished pairs; it cannot be combined with personas, suffixes or a template")
        pairs = load_pairs(pairs_file)
        return pairs[:max_pairs] if max_pairs else pairs
    if (positive_file is None) != (negative_file is None):
        raise ValueError("give both positive_file and negative_file (one persona per line, paired by line)")
    if personas_file is not None and positive_file is not None:
        raise ValueError("give personas_file or positive_file + negative_file, not both")
    base = load_builtin(builtin)
    template = template if template is not None else base["template"]
    add_article = not template_has_article(template)
    if personas_file is not None:
        personas = load_persona_pairs(personas_file, add_article)
    elif positive_file is not None:
        personas = make_persona_pairs(read_list(positive_file), read_list(negative_file), add_article)
    else:
        personas = base["personas"]
    suffixes = read_list(suffixes_file) if suffixes_file is not None else base["suffixes"]
    return build_pairs(tokenizer, personas, suffixes, template, system=system, plain_text=plain_text,
                       max_pairs=max_pairs)


# ------------------------------------------------------------------------------------------- splits


def shuffle_pairs(pairs: Sequence[ContrastivePair], seed: int = 0) -> list[ContrastivePair]:
    """A seeded shuffle (Python's `random.Random`, so it does not touch torch's global RNG)."""
    out = list(pairs)
    random.Random(seed).shuffle(out)
    return out


def split_pairs(
    pairs: Sequence[ContrastivePair], val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[ContrastivePair], list[ContrastivePair]]:
    """Seeded (train, validation) split with round(n * val_fraction) validation pairs (at least 1 if > 0).

    Pairs sharing a `group` (the same suffix under several personas) land on the same side, so validation
    never sees a suffix that training saw; the validation size can then overshoot by less than one group.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(pairs)
    if n == 0:
        raise ValueError("no pairs to split")
    n_val = 0 if val_fraction == 0 else max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"{n} pairs are too few for a {val_fraction:.0%} validation split")
    groups: dict[object, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.group if p.group is not None else ("#", i), []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    val_idx: list[int] = []
    for k in keys:
        if len(val_idx) >= n_val:
            break
        val_idx.extend(groups[k])
    if len(val_idx) >= n:
        raise ValueError(f"the {len(keys)} suffix group(s) are too few for a {val_fraction:.0%} validation split")
    val_set = set(val_idx)
    train = shuffle_pairs([p for i, p in enumerate(pairs) if i not in val_set], seed)
    val = [pairs[i] for i in val_idx]
    seen = set(train)
    overlap = sum(p in seen for p in val)
    if overlap:
        warnings.warn(f"{overlap} of {len(val)} validation pairs also appear in the training pairs (repeated rows); "
                      f"{'validation then measures how well training fits itself' if overlap == len(val) else 'validation is partly training data'}: "
                      "remove the repeated rows", stacklevel=2)
    return train, val


def builtin_instructions(builtin: str = "honesty") -> tuple[str, str]:
    """(positive, negative) explicit instructions of a built-in set (its `instructions` field), e.g. "Answer in
    a very cheerful tone." / "Answer in a very gloomy tone.": the `instruction` prompting baseline."""
    from innerpissa.data.builtin import load_builtin

    data = load_builtin(builtin)
    ins = data.get("instructions")
    if not (isinstance(ins, list) and len(ins) == 2 and all(isinstance(t, str) and t.strip() for t in ins)):
        raise ValueError(f"built-in set {builtin!r} has no `instructions` pair [positive, negative]; add one to "
                         f"{builtin}.json or pass the texts (positive=..., negative=...)")
    return ins[0], ins[1]


def builtin_personas(builtin: str = "honesty") -> tuple[str, str]:
    """(positive, negative) persona sentences from a built-in set's template and first persona pair."""
    from innerpissa.data.builtin import load_builtin

    data = load_builtin(builtin)
    pos, neg = data["personas"][0]
    return data["template"].replace(SLOT, pos), data["template"].replace(SLOT, neg)
