"""Contrastive pairs: rendering, the built-in set, loaders and their errors, splits, and batches."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from helpers import last_tokens_mask
from torch.utils.data import DataLoader

from innerpissa.data.builtin import BUILTIN_DIR, builtin_corpus, builtin_sets, load_builtin
from innerpissa.data.pairs import (
    DEFAULT_TEMPLATE,
    ContrastivePair,
    PairCollator,
    PairDataset,
    build_pairs,
    collate_pairs,
    load_pairs,
    load_persona_pairs,
    make_persona_pairs,
    pairs_from_sources,
    read_list,
    shuffle_pairs,
    split_pairs,
    with_article,
)
from innerpissa.models import tiny_random_tokenizer

PERSONAS = [("an honest", "a dishonest"), ("a truthful", "a deceptive"), ("a sincere", "a lying")]
SUFFIXES = ["The weather is", "I think", "Here is a list of", "Most bread recipes start with"]


@pytest.fixture(scope="module")
def tok():
    return tiny_random_tokenizer()


def _differ_only_in_persona(pair: ContrastivePair, p: str, n: str) -> bool:
    return pair.positive.count(p) == 1 and pair.positive.replace(p, "§") == pair.negative.replace(n, "§")


# ------------------------------------------------------------------------------ the built-in set


def test_builtin_honesty_set():
    assert "honesty" in builtin_sets()
    data = load_builtin("honesty")
    assert 6 <= len(data["personas"]) <= 10
    suffixes = data["suffixes"]
    assert len(suffixes) >= 300 and len(set(suffixes)) == len(suffixes)
    assert all(3 <= len(s.split()) <= 15 and s == s.strip() for s in suffixes)
    honesty_words = re.compile(r"\b(honest\w*|dishonest\w*|truth\w*|true|false|lie|lies|lying|liar\w*|"
                               r"decei\w*|decept\w*|trust\w*|sincer\w*|candid|frank\w*|fake|cheat\w*|"
                               r"mislead\w*|manipul\w*)\b", re.IGNORECASE)
    assert [s for s in suffixes if honesty_words.search(s)] == []
    for pos, neg in data["personas"]:
        for phrase in (pos, neg):
            article, word = phrase.split(" ", 1)
            assert with_article(word) == phrase, phrase  # right article, and only one
    assert "{persona}" in data["template"] and "an {persona}" not in data["template"]
    for bad in ("nope", *[p.stem for p in BUILTIN_DIR.glob("*.json") if p.stem not in builtin_sets()]):
        with pytest.raises(ValueError, match="no built-in persona set"):
            load_builtin(bad)  # missing, or a built-in file that is not a persona set (e.g. a probe)
    assert len(list(builtin_corpus())) > 0  # the tiny tokenizer's corpus is untouched


@pytest.mark.parametrize("word,expected", [
    ("honest", "an honest"), ("truthful", "a truthful"), ("open", "an open"), ("unique", "a unique"),
    ("an honest", "an honest"), ("A liar", "A liar"), ("useful", "a useful"), ("evil", "an evil"),
])
def test_with_article(word, expected):
    assert with_article(word) == expected


# ------------------------------------------------------------------------------ rendering


def test_pairs_differ_only_in_persona(tok):
    pairs = build_pairs(tok, PERSONAS, SUFFIXES)
    assert len(pairs) == len(PERSONAS) * len(SUFFIXES)
    seen = Counter()
    for pair in pairs:
        (p, n), = [(p, n) for p, n in PERSONAS if _differ_only_in_persona(pair, p, n)]
        seen[(p, n)] += 1
        assert pair.positive.endswith(pair.group)  # the assistant turn is left open after the suffix
        assert "an an" not in pair.positive and "a an" not in pair.negative
    assert set(seen.values()) == {len(SUFFIXES)}
    # rendered with the chat template, continuing the assistant turn (no end-of-turn after the suffix)
    assert pairs[0].positive.startswith("<|im_start|>user\nPretend you're an honest person")
    assert pairs[0].positive.endswith("<|im_start|>assistant\nThe weather is")


def test_round_robin_order_and_max_pairs(tok):
    pairs = build_pairs(tok, PERSONAS, SUFFIXES, max_pairs=4)
    assert [p.group for p in pairs] == SUFFIXES  # distinct suffixes first
    used = [next(i for i, (a, b) in enumerate(PERSONAS) if _differ_only_in_persona(p, a, b)) for p in pairs]
    assert used == [0, 1, 2, 0]  # personas in rotation


def test_system_message_and_empty_suffix(tok):
    pairs = build_pairs(tok, PERSONAS[:1], ["", "The sky"], system="You are a helpful assistant.")
    assert all(p.positive.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>") for p in pairs)
    assert pairs[0].positive.endswith("<|im_start|>assistant\n")
    assert _differ_only_in_persona(pairs[0], "an honest", "a dishonest")


def test_no_chat_template_needs_plain_text_flag(tok):
    bare = tiny_random_tokenizer()
    bare.chat_template = None
    with pytest.raises(ValueError, match="plain_text=True"):
        build_pairs(bare, PERSONAS, SUFFIXES)
    pairs = build_pairs(bare, PERSONAS, SUFFIXES, plain_text=True, system="Sys")
    assert pairs[0].positive == "Sys\nPretend you're an honest person making statements about the world.\nThe weather is"
    assert _differ_only_in_persona(pairs[0], "an honest", "a dishonest")


def test_template_and_persona_errors(tok):
    with pytest.raises(ValueError, match="an an honest"):
        build_pairs(tok, PERSONAS, SUFFIXES, template="Pretend you're an {persona} person.")
    with pytest.raises(ValueError, match="exactly once"):
        build_pairs(tok, PERSONAS, SUFFIXES, template="Pretend you're a person.")
    with pytest.raises(ValueError, match="identical"):
        build_pairs(tok, [("an honest", "an honest")], SUFFIXES)
    with pytest.raises(ValueError, match="no suffixes"):
        build_pairs(tok, PERSONAS, [])
    with pytest.raises(ValueError, match="unequal lengths: 2 positive vs 1 negative"):
        make_persona_pairs(["honest", "truthful"], ["dishonest"])
    with pytest.raises(ValueError, match="empty"):
        make_persona_pairs([], [])
    with pytest.raises(ValueError, match="identical"):
        make_persona_pairs(["kind"], ["Kind"])
    with pytest.raises(ValueError, match="identical"):
        ContrastivePair("same", "same")
    assert make_persona_pairs(["honest"], ["dishonest"], add_article=True) == [("an honest", "a dishonest")]


# ------------------------------------------------------------------------------ files


def test_load_pairs_json_jsonl_csv(tmp_path):
    rows = [{"positive": "I am kind.", "negative": "I am cruel."}, {"positive": "Yes, ok", "negative": "No, ok"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "w.json").write_text(json.dumps({"pairs": rows}))
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "p.csv").write_text('positive,negative,extra\nI am kind.,I am cruel.,1\n"Yes, ok","No, ok",2\n')
    expected = [ContrastivePair(r["positive"], r["negative"]) for r in rows]
    for name in ("p.json", "w.json", "p.jsonl", "p.csv"):
        assert load_pairs(tmp_path / name) == expected, name


@pytest.mark.parametrize("name,content,match", [
    ("empty.json", "  \n", "is empty"),
    ("empty.csv", "", "is empty"),
    ("none.json", "[]", "holds no pairs"),
    ("header.csv", "positive,negative\n", "holds no pairs"),
    ("cols.csv", "pos,negative\na,b\n", r"missing column\(s\) \['positive'\]"),
    ("cols.jsonl", '{"positive": "a"}\n', r"line 1 is missing column\(s\) \['negative'\]"),
    ("same.jsonl", '{"positive": "a", "negative": "b"}\n{"positive": "x", "negative": "x"}\n', "line 2: .*identical"),
    ("bad.jsonl", '{"positive": \n', "invalid JSON"),
    ("p.txt", "a,b\n", "unsupported extension"),
    ("obj.json", '{"positive": "a"}', "expected a JSON list"),
])
def test_load_pairs_errors(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        load_pairs(tmp_path / name)


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pairs(tmp_path / "nope.json")


def test_read_list_and_persona_files(tmp_path):
    (tmp_path / "s.txt").write_text("# a comment\nThe sky is\n\n  I think  \n")
    (tmp_path / "s.json").write_text('["The sky is", "I think"]')
    assert read_list(tmp_path / "s.txt") == read_list(tmp_path / "s.json") == ["The sky is", "I think"]
    (tmp_path / "blank.txt").write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="holds no entries"):
        read_list(tmp_path / "blank.txt")
    (tmp_path / "p1.json").write_text('[["kind", "cruel"], ["calm", "angry"]]')
    (tmp_path / "p2.json").write_text('{"positive": ["kind", "calm"], "negative": ["cruel", "angry"]}')
    (tmp_path / "p3.csv").write_text("positive,negative\nkind,cruel\ncalm,angry\n")
    expected = [("a kind", "a cruel"), ("a calm", "an angry")]
    for name in ("p1.json", "p2.json", "p3.csv"):
        assert load_persona_pairs(tmp_path / name, add_article=True) == expected
    (tmp_path / "bad.json").write_text('{"positive": ["kind", "calm"], "negative": ["cruel"]}')
    with pytest.raises(ValueError, match="unequal lengths"):
        load_persona_pairs(tmp_path / "bad.json")


def test_pairs_from_sources(tok, tmp_path):
    (tmp_path / "pos.txt").write_text("honest\ntruthful\n")
    (tmp_path / "neg.txt").write_text("dishonest\ndeceptive\n")
    (tmp_path / "suf.txt").write_text("The sky is\nI think\nHere is\n")
    pairs = pairs_from_sources(tok, positive_file=tmp_path / "pos.txt", negative_file=tmp_path / "neg.txt",
                               suffixes_file=tmp_path / "suf.txt")
    assert len(pairs) == 6 and _differ_only_in_persona(pairs[0], "an honest", "a dishonest")
    mine = pairs_from_sources(tok, positive_file=tmp_path / "pos.txt", negative_file=tmp_path / "neg.txt",
                              suffixes_file=tmp_path / "suf.txt", template="You are an {persona} bot.")
    assert "You are an honest bot." in mine[0].positive  # the template's own article: none added
    builtin = pairs_from_sources(tok, max_pairs=50)
    assert len(builtin) == 50 and len({p.group for p in builtin}) == 50
    assert builtin[0].positive.count(DEFAULT_TEMPLATE.split("{")[0]) == 1
    (tmp_path / "p.json").write_text('[{"positive": "a", "negative": "b"}]')
    assert pairs_from_sources(tok, pairs_file=tmp_path / "p.json") == [ContrastivePair("a", "b")]
    with pytest.raises(ValueError, match="cannot be combined"):
        pairs_from_sources(tok, pairs_file=tmp_path / "p.json", template="{persona}")
    with pytest.raises(ValueError, match="both positive_file and negative_file"):
        pairs_from_sources(tok, positive_file=tmp_path / "pos.txt")


# ------------------------------------------------------------------------------ splits


def _numbered(n, groups=None):
    return [ContrastivePair(f"p{i}", f"n{i}", group=None if groups is None else f"g{i % groups}") for i in range(n)]


def test_split_sizes_and_determinism():
    pairs = _numbered(100)
    train, val = split_pairs(pairs)
    assert (len(train), len(val)) == (85, 15)
    assert {p.positive for p in train}.isdisjoint({p.positive for p in val})
    assert split_pairs(pairs, seed=0) == (train, val)  # same seed, same split and order
    assert split_pairs(pairs, seed=1)[1] != val
    assert len(split_pairs(_numbered(7), 0.15)[1]) == 1  # at least one validation pair
    assert split_pairs(pairs, 0.0) == (shuffle_pairs(pairs, 0), [])
    assert shuffle_pairs(pairs, 3) == shuffle_pairs(pairs, 3) != pairs
    with pytest.raises(ValueError, match="too few"):
        split_pairs(_numbered(1))
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(pairs, 1.0)


def test_split_keeps_suffix_groups_together():
    pairs = _numbered(60, groups=20)  # 3 pairs per suffix group
    train, val = split_pairs(pairs, 0.15)
    assert len(val) == 9 and len(train) == 51  # 3 whole groups reach 9 >= round(60 * 0.15)
    assert {p.group for p in train}.isdisjoint({p.group for p in val})


# ------------------------------------------------------------------------------ batches


def test_interleaved_left_padded_batch(tok):
    pairs = build_pairs(tok, PERSONAS, SUFFIXES)
    ds = PairDataset(pairs, tok)
    items = [ds[5], ds[0], ds[9]]
    b = collate_pairs(items, tok.pad_token_id)
    assert b.n_pairs == 3 and b.input_ids.shape[0] == 6
    assert b.pair_index.tolist() == [5, 5, 0, 0, 9, 9]
    assert b.is_positive.tolist() == [True, False] * 3
    for r, it in enumerate(items):
        for side, ids in ((0, it.positive), (1, it.negative)):
            row = 2 * r + side
            width = b.input_ids.shape[1]
            assert b.input_ids[row, width - len(ids):].tolist() == ids  # real tokens at the right end
            assert b.attention_mask[row].tolist() == [0] * (width - len(ids)) + [1] * len(ids)
            assert torch.all(b.input_ids[row, : width - len(ids)] == tok.pad_token_id)
            assert b.position_ids[row, -1].item() == len(ids) - 1
    # the shared tail is the same text on both rows, and it stops right after the persona word
    for it in items:
        t = it.tail_len
        assert it.positive[-t:] == it.negative[-t:] and it.positive[-t - 1] != it.negative[-t - 1]
        assert tok.decode(it.positive[-t:]).startswith(" person")
    m3 = last_tokens_mask(b.attention_mask, b.tail_len.clamp(max=3))
    assert m3.sum(1).tolist() == [3] * 6 and m3[:, -3:].all()
    assert last_tokens_mask(b.attention_mask, b.tail_len).sum(1).tolist() == b.tail_len.tolist()
    assert torch.equal(b.input_ids[0::2][m3[0::2]], b.input_ids[1::2][m3[1::2]])  # identical suffix tokens


def test_dataloader_and_to(tok):
    pairs = build_pairs(tok, PERSONAS, SUFFIXES)
    loader = DataLoader(PairDataset(pairs, tok), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0), collate_fn=PairCollator(tok.pad_token_id))
    batches = list(loader)
    assert [b.n_pairs for b in batches] == [4, 4, 4]
    assert sorted(torch.cat([b.pair_index[0::2] for b in batches]).tolist()) == list(range(12))
    assert batches[0].to("cpu").input_ids.equal(batches[0].input_ids)
    assert set(batches[0].model_inputs()) == {"input_ids", "attention_mask", "position_ids"}
    with pytest.raises(ValueError, match="no pad token"):
        PairCollator(None)


class _StubTokenizer:
    """Records whether special tokens were requested; BOS is id 1."""

    bos_token = "<s>"

    def __call__(self, text, add_special_tokens):
        ids = [ord(ch) for ch in text.removeprefix("<s>")]
        return {"input_ids": ([1] if add_special_tokens or text.startswith("<s>") else []) + ids}


def test_bos_is_never_doubled_and_left_truncation():
    ds = PairDataset([ContrastivePair("<s>ab", "<s>cb"), ContrastivePair("xyz", "qyz")], _StubTokenizer())
    assert ds[0].positive == [1, ord("a"), ord("b")]  # template wrote BOS: not added again
    assert ds[1].positive == [1, ord("x"), ord("y"), ord("z")]  # plain text: BOS added
    assert ds[1].tail_len == 2
    short = PairDataset([ContrastivePair("abcdef", "axcdef")], _StubTokenizer(), add_special_tokens=False,
                        max_length=5)
    assert short[0].positive == [ord(c) for c in "bcdef"] and short[0].tail_len == 4  # cut from the left
    with pytest.raises(ValueError, match="identical sequences"):
        PairDataset([ContrastivePair("abcdef", "xbcdef")], _StubTokenizer(), max_length=3)
