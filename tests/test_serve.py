"""`innerpissa serve`: the batch that rows join and leave, the engine, and the HTTP API against a real uvicorn
server on loopback (the `openai` client itself for the OpenAI shapes), on the tiny random model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from helpers import randomize

import innerpissa as ip
from innerpissa.adapter import AdapterConfig

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "Describe the street outside a train station."
MODEL = "tiny-random"


def _adapter(folder, concept="sentiment", std=1.0):
    """A randomised adapter on the tiny model, saved as if trained on `concept` over c in [-1, 1]."""
    model, _ = ip.load_model(MODEL)
    ip.attach(model, AdapterConfig(r=8))
    randomize(ip.adapter_parameters(model), std=std)
    ip.save_adapter(model, folder, coeff_range=(-1.0, 1.0), extra={"config": {"data": {"builtin": concept}}})
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return _adapter(tmp_path_factory.mktemp("serve") / "adapter")


def _app(adapter_dir, **kw):
    from innerpissa.serve.launch import Serve, build_app

    opts = dict(adapter=(f"sentiment={adapter_dir}",), model=MODEL, max_tokens=400, max_batch=8)
    return build_app(Serve(**{**opts, **kw}))


@pytest.fixture(scope="module")
def url(adapter_dir):
    from innerpissa.serve.launch import background

    with background(_app(adapter_dir)) as base:
        yield base


def chat(url, content=PROMPT, timeout=60, **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 12,
            **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def text_of(r) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def stats(url):
    return httpx.get(f"{url}/stats").json()


def wait_idle(url, seconds=20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        s = stats(url)
        if s["running"] == 0 and s["waiting"] == 0 and s["cache_rows"] == 0:
            return s
        time.sleep(0.05)
    raise AssertionError(f"rows still held after {seconds} s: {stats(url)}")


# ------------------------------------------------------------------------------------------ the batch


def test_rows_joining_and_leaving_get_the_logits_they_get_alone(one_thread):
    """Rows at their own coefficients (two adapters) that join mid-decode with longer or shorter prompts and
    leave early compute what each computes decoded alone (float rounding)."""
    from innerpissa.eval.generation import chat_ids
    from innerpissa.serve.batch import Batch

    model, tok = ip.load_model(MODEL)
    ip.attach(model, AdapterConfig(r=8, layers=[-1]), name="a")
    ip.attach(model, AdapterConfig(r=8, layers=[-1], seed=3), name="b")
    randomize(ip.adapter_parameters(model), std=0.5)
    prompts = [chat_ids(tok, "Describe a street."), chat_ids(tok, "Tell a long story about a dog, a cat and a mouse."),
               chat_ids(tok, "Hi")]
    keys = [(1.0, 0.0), (-0.5, 1.0), (0.0, 0.0)]

    def alone(i, n=12):
        b = Batch(model, ["a", "b"], tok.pad_token_id)
        b.join([prompts[i]], [keys[i]], n)
        logits, toks = [b.logits[0].clone()], []
        for _ in range(n):
            toks.append(int(b.logits[0].argmax()))
            b.step([toks[-1]])
            logits.append(b.logits[0].clone())
        return toks, logits

    ref = {i: alone(i) for i in range(3)}
    assert ref[0][0] != ref[2][0]
    b = Batch(model, ["a", "b"], tok.pad_token_id)
    live, pos, worst, widths = [], {}, 0.0, []
    joins = {0: 0, 3: 1, 5: 2}  # step -> row joining
    for step in range(30):
        if step in joins:
            i = joins[step]
            b.join([prompts[i]], [keys[i]], 12)
            live.append(i)
            pos[i] = 0
        for j, i in enumerate(live):
            worst = max(worst, float((b.logits[j] - ref[i][1][pos[i]]).abs().max()))
        keep = [j for j, i in enumerate(live) if not (i == 0 and pos[0] >= 7) and pos[i] < 12]  # row 0 leaves early
        live = [live[j] for j in keep]
        b.keep(keep)
        if not live:
            break
        b.step([ref[i][0][pos[i]] for i in live])
        widths.append(b.width)
        for i in live:
            pos[i] += 1
    assert worst < 1e-4
    assert len(b) == 0 and b.state is None
    assert min(widths[-3:]) < max(widths)  # the long row's padding columns were trimmed after it left


def test_text_stream_holds_back_stop_strings_and_partial_characters():
    from innerpissa.serve.sampling import TextStream

    class Chars:  # one token per byte
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    def run(text, stop):
        s, shown = TextStream(Chars(), stop), []
        for b in text.encode():
            new, stopped = s.push(b)
            shown.append(new)
            if stopped:
                return "".join(shown), True, shown
        return "".join(shown) + s.finish(), False, shown

    assert run("hello END world", ["END"])[:2] == ("hello ", True)
    assert run("say ab then abc", ["abc", "then"])[:2] == ("say ab ", True)  # the earliest stop wins
    text, stopped, shown = run("an ABx", ["ABC"])
    assert (text, stopped) == ("an ABx", False) and "AB" not in "".join(shown[:-1])  # held until it could not stop
    text, _, shown = run("café ok", [])
    assert text == "café ok" and all("\ufffd" not in x for x in shown)  # é (2 bytes) shown once complete


def test_sampling_top_p_and_seeds():
    from innerpissa.serve.sampling import next_token

    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert next_token(logits, 0.0, 1.0, None) == 1
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    draws = [next_token(logits, 1.0, 1.0, g(s)) for s in range(40)]
    assert set(draws) > {1}
    assert {next_token(logits, 1.0, 0.3, g(s)) for s in range(40)} == {1}  # top_p keeps the most likely only
    assert {next_token(logits, 1.0, 0.6, g(s)) for s in range(40)} <= {1, 3}
    assert [next_token(logits, 1.0, 1.0, g(s)) for s in range(40)] == draws


# ------------------------------------------------------------------------------------------ the HTTP API


def test_models_lists_each_adapter(url, adapter_dir):
    from innerpissa.adapter.io import WEIGHTS_NAME, file_sha256

    data = httpx.get(f"{url}/v1/models").json()["data"]
    assert [m["id"] for m in data] == [MODEL]
    (a,) = data[0]["adapters"]
    assert a == {"name": "sentiment", "concept": "sentiment", "coeff_range": [-1.0, 1.0], "max_abs_c": 2.0,
                 "sha256": file_sha256(adapter_dir / WEIGHTS_NAME), "scorer": "vader_compound"}


def test_greedy_tokens_equal_innerpissa_generate(url, adapter_dir, capsys):
    from innerpissa.cli import main

    got = {}
    for c in (-1.0, 0.0, 1.0):
        main(["generate", "--adapter", str(adapter_dir), "--model", MODEL, "--prompt", PROMPT, "--coeffs", str(c),
              "--max-new-tokens", "12"])
        line = capsys.readouterr().out.strip().splitlines()[-1]
        want = line.split(": ", 1)[1] if ": " in line else ""
        got[c] = text_of(chat(url, steer={"sentiment": c}))
        assert got[c].strip() == want
    assert got[-1.0] != got[1.0]
    assert text_of(chat(url, steer=1.0)) == got[1.0]  # a bare number for the one adapter


def test_concurrent_requests_batch_and_match_one_at_a_time(url):
    """Requests at mixed coefficients sent together share batches (rows joining mid-decode) and return what
    each returns alone; every row is freed afterwards."""
    jobs = [(p, c) for p in ("Describe a street.", "Name a colour.", PROMPT) for c in (-1.0, 0.5, 1.0)]
    alone = [text_of(chat(url, p, steer={"sentiment": c}, max_tokens=16)) for p, c in jobs]
    before = stats(url)["max_batch_reached"]
    out: list = [None] * len(jobs)

    def go(i):
        out[i] = text_of(chat(url, jobs[i][0], steer={"sentiment": jobs[i][1]}, max_tokens=16))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == alone
    s = wait_idle(url)
    assert s["max_batch_reached"] > max(before, 1)


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(url):
    kw = dict(temperature=0.9, top_p=0.95, seed=1234, max_tokens=16, steer={"sentiment": 0.5})
    alone = text_of(chat(url, **kw))
    out = {}

    def go(name, **k):
        out[name] = text_of(chat(url, **k))

    threads = [threading.Thread(target=go, args=("seeded",), kwargs=kw)]
    threads += [threading.Thread(target=go, args=(f"other{i}",), kwargs=dict(temperature=1.0, max_tokens=16,
                                                                               steer={"sentiment": -1.0}))
                for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["seeded"] == alone
    assert text_of(chat(url, **{**kw, "seed": 99})) != alone


def test_openai_client_streams_and_completes(url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    msgs = [{"role": "user", "content": PROMPT}]
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                           extra_body={"steer": {"sentiment": -1.0}})
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens <= 12
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"steer": {"sentiment": -1.0}}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the legacy completions endpoint, plain and streamed, and a stop string
    done = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True))
    assert streamed == done.choices[0].text and done.usage.completion_tokens <= 10
    text = whole.choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    if stop.strip():
        cut = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0, stop=[stop],
                                             extra_body={"steer": {"sentiment": -1.0}})
        assert cut.choices[0].message.content == text[:text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=msgs, extra_body={"steer": {"honesty": 1.0}})
    assert e.value.body["param"] == "steer.honesty"


def _long(n):
    return " ".join(["word"] * n)


BAD = [  # (body changes or a raw body, status, param)
    ({"steer": {"honesty": 1.0}}, 400, "steer.honesty"),
    ({"steer": {"sentiment": 2.5}}, 400, "steer.sentiment"),
    ({"steer": {"sentiment": "1"}}, 400, "steer.sentiment"),
    ({"steer": {"sentiment": True}}, 400, "steer.sentiment"),
    ({"steer": [1.0]}, 400, "steer"),
    ('{"model": "tiny-random", "messages": [{"role": "user", "content": "x"}], "steer": {"sentiment": NaN}}', 400,
     "steer.sentiment"),
    ('{"model": "tiny-random", "messages": [{"role": "user", "content": "x"}], "steer": Infinity}', 400, "steer.sentiment"),
    ({"messages": []}, 400, "messages"),
    ({"messages": None}, 400, "messages"),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 400, "messages.1.role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "user", "content": "c"}]}, 400, "messages.1.role"),
    ({"temperature": "0.5"}, 400, "temperature"),
    ({"temperature": 3.0}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"max_tokens": 1.5}, 400, "max_tokens"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 401}, 400, "max_tokens"),  # over the server's --max-tokens 400
    ({"max_tokens": 12, "max_completion_tokens": 13}, 400, "max_completion_tokens"),
    ({"stream": "yes"}, 400, "stream"),
    ({"seed": -1}, 400, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": [""]}, 400, "stop"),
    ({"n": 2}, 400, "n"),
    ({"logit_bias": {"1": 5}}, 400, "logit_bias"),
    ({"model": "gpt-4o"}, 404, "model"),
    ({"model": None}, 400, "model"),
    ({"messages": [{"role": "user", "content": _long(600)}]}, 400, "messages"),  # over the 512-token context
    ({"messages": [{"role": "user", "content": _long(230)}], "max_tokens": 60}, 400, "max_tokens"),
    ("{not json", 400, "body"),
    ("[1, 2]", 400, "body"),
    ('{"model": "tiny-random", "messages": [{"role": "user", "content": "x"}], "pad": "' + "x" * (1 << 20) + '"}',
     413, "body"),
]


@pytest.mark.parametrize("change,status,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(url, change, status, param):
    if isinstance(change, str):
        r = httpx.post(f"{url}/v1/chat/completions", content=change, headers={"content-type": "application/json"})
    else:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **change}
        body = {k: v for k, v in body.items() if not (k == "messages" and v is None)}
        r = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_bad_completions_and_score_requests(url):
    post = lambda path, body: httpx.post(f"{url}{path}", json=body)  # noqa: E731
    r = post("/v1/completions", {"model": MODEL, "prompt": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = post("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = post("/score", {"adapter": "honesty", "texts": ["good"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "adapter"
    r = post("/score", {"adapter": "sentiment", "texts": ["What a wonderful, happy day!", "Awful, sad and grim."]})
    good, bad = r.json()["scores"]
    assert good > 0.5 and bad < -0.5
    r = httpx.get(f"{url}/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    wait_idle(url)


def test_a_disconnecting_stream_frees_its_row(url):
    """A client that goes away after the first chunk: its row leaves the batch long before its 400 tokens."""
    before = wait_idle(url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 400, "temperature": 0,
            "stream": True, "steer": {"sentiment": 1.0}}
    with httpx.Client(timeout=30) as client, client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    s = wait_idle(url)
    assert s["finished"].get("cancelled", 0) == before["finished"].get("cancelled", 0) + 1
    assert s["tokens"] - before["tokens"] < 300


def test_a_client_giving_up_on_a_plain_request_frees_its_row(url):
    before = wait_idle(url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 400, "temperature": 0,
            "steer": {"sentiment": 1.0}}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=0.2)
    s = wait_idle(url)
    assert s["finished"].get("cancelled", 0) == before["finished"].get("cancelled", 0) + 1
    assert s["tokens"] - before["tokens"] < 300


def test_full_queue_is_a_503_with_retry_after_and_timeouts_are_504(adapter_dir):
    from innerpissa.serve.launch import background

    with background(_app(adapter_dir, max_queue=0)) as base:
        r = chat(base)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and r.json()["error"]["message"]
    with background(_app(adapter_dir, timeout=0.05, max_tokens=400)) as base:
        r = chat(base, max_tokens=400, stop=["\u2603\u2603"])
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
        wait_idle(base)


def test_engine_answers_cancelled_and_expired_requests_in_the_queue(adapter_dir):
    from innerpissa.eval.generation import chat_ids
    from innerpissa.serve.engine import Engine, GenRequest

    model, tok = ip.load_model(MODEL)
    ip.load_adapter(model, adapter_dir, name="sentiment")
    eng = Engine(model, tok, ["sentiment"], {tok.eos_token_id}, max_batch=1, max_queue=4, timeout=30)

    async def go():
        loop = asyncio.get_running_loop()
        ids = chat_ids(tok, PROMPT)
        first = eng.submit(GenRequest(ids, (1.0,), 40, 0.0), loop)
        gone = eng.submit(GenRequest(ids, (1.0,), 40, 0.0), loop)
        late = eng.submit(GenRequest(ids, (1.0,), 40, 0.0), loop)
        gone.cancel()
        late.deadline = 0.0
        eng.start()
        evs = {}
        for name, h in (("first", first), ("gone", gone), ("late", late)):
            while True:
                ev = await asyncio.wait_for(h.events.get(), 60)
                if ev.kind != "text":
                    evs[name] = ev
                    break
        return evs

    try:
        evs = asyncio.run(go())
    finally:
        eng.stop()
    assert evs["first"].kind == "done" and evs["first"].completion_tokens > 0
    assert (evs["gone"].kind, evs["gone"].status) == ("error", 499)
    assert (evs["late"].kind, evs["late"].status) == ("error", 504)
    assert eng.snapshot()["cache_rows"] == 0


def test_host_and_api_key(adapter_dir, monkeypatch):
    from innerpissa.errors import InputError
    from innerpissa.serve.launch import Serve, background

    monkeypatch.delenv("INNERPISSA_API_KEY", raising=False)
    with pytest.raises(InputError, match="--api-key"):
        Serve(host="0.0.0.0").check()
    Serve(host="0.0.0.0", api_key="k").check()
    Serve(host="::1").check()
    with pytest.raises(InputError, match="NAME=PATH"):
        Serve(adapter=("=x",)).check()
    with pytest.raises(InputError, match="not a folder"):
        Serve(adapter=(f"a={adapter_dir}-missing",)).check()
    with background(_app(adapter_dir, api_key="s3cret")) as base:
        assert httpx.get(f"{base}/").status_code == 200  # the page itself asks for the key
        r = chat(base)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = httpx.post(f"{base}/v1/chat/completions", headers={"Authorization": "Bearer s3cret"},
                        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert ok.status_code == 200


def test_playground_page_is_served(url):
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert 'id="generate"' in r.text and "/v1/chat/completions" in r.text


def test_serve_command_line_errors_are_one_line(adapter_dir):
    from innerpissa.cli import main

    with pytest.raises(SystemExit, match="refusing to listen on 0.0.0.0"):
        main(["serve", "--host", "0.0.0.0", "--adapter", f"s={adapter_dir}"])
    with pytest.raises(SystemExit, match="--max-abs-c"):
        main(["serve", "--max-abs-c", "nan", "--adapter", f"s={adapter_dir}"])


def test_bench_serve_runs_on_the_tiny_model(tmp_path, monkeypatch):
    """bench/serve.py end to end at a small scale: a server process, concurrent clients, the soak's checks."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_serve", bench)
    spec.loader.exec_module(bench)
    out = bench.main(["throughput", "--model", MODEL, "--requests", "4", "--clients", "1", "2", "--max-tokens", "3",
                      "--threads", "1", "--log-dir", str(tmp_path)])
    assert set(out["runs"]) == {"mixed@1", "mixed@2", "zero@1", "zero@2"}
    assert all(r["requests"] == 4 and r["failed"] == 0 and r["tokens"] > 0 for r in out["runs"].values())
    assert out["runs"]["mixed@1"]["max_batch"] == 1 and out["runs"]["mixed@2"]["max_batch"] == 2
    soak = bench.main(["soak", "--model", MODEL, "--requests", "60", "--clients", "6", "--disconnect", "0.4",
                       "--max-tokens", "4", "--threads", "1", "--log-dir", str(tmp_path)])
    assert soak["pass"], soak
    assert soak["counts"]["malformed_ok"] > 0 and soak["counts"]["disconnected"] > 0 and soak["leaked_rows"] == 0
