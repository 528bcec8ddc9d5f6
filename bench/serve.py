"""`innerpissa serve` under load (issue 18 item 6), on loopback only, with a bounded request count and time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py throughput --model smollm2 --adapter runs/sentiment/adapter
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py soak --model smollm2 --adapter runs/sentiment/adapter
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py greedy --model smollm2 --adapter runs/sentiment/adapter

The server runs as its own process (`innerpissa serve` on 127.0.0.1, a free port), so its memory can be read
and a crash is seen; the clients are asyncio tasks with httpx in this process.

`throughput`: the same `--requests` chat requests (held-out neutral prompts, greedy, `--max-tokens` each)
sent by N concurrent clients (`--clients`, default 1 4 16), each client one request after another, at mixed
coefficients (c cycling -1, -0.5, 0.5, 1) and again with every c = 0; N = 1 is serving them one at a
time. Reports completion tokens/s, p50/p95 request latency, and the batch sizes the engine reached (its
/stats). Targets: mixed at 16 clients >= 0.8x all-zero at 16 and >= 3x mixed at 1.

`soak`: `--requests` requests (default 2000) from 16 clients, streamed or not, at random coefficients, with
10 % malformed (each must be a 4xx naming its field) and random client disconnects (streams closed after
their first chunk, plain requests given up after 50 ms). Checks: the server never dies, no row is left held afterwards (/stats), every malformed
request got its 4xx, and the server's RSS stays within 10 % of its level after warm-up.

`greedy`: the tokens of `innerpissa generate` (`generate_sweep`, one prompt at c = -1, 0, +1) against the
server's greedy answers for the same prompts and c, sent one at a time, three at a time (one prompt's
coefficients) and all at once; counts the continuations that are identical.

Without `--adapter`, an adapter with the smollm2-cpu preset's shape (r 128 on 8 blocks) at random parameters
is made (the speed does not depend on what it learned). Timings need quiet cores: say so when they were not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MIXED = (-1.0, -0.5, 0.5, 1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapter(model_name: str, folder: Path) -> Path:
    """An adapter of the smollm2-cpu preset's shape (the tiny preset's on the tiny model) at random parameters."""
    import torch

    import innerpissa as ip
    from innerpissa.adapter import AdapterConfig

    model, _ = ip.load_model(model_name)
    cfg = AdapterConfig(r=8) if model_name.startswith("tiny-random") else AdapterConfig(r=128, n_layers=8)
    ip.attach(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ip.adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    ip.save_adapter(model, folder, coeff_range=(-1.0, 1.0), extra={"config": {"data": {"builtin": "sentiment"}}})
    return folder


class Server:
    """`innerpissa serve` in a child process on 127.0.0.1."""

    def __init__(self, model: str, adapter: Path, max_batch: int, max_queue: int, max_tokens: int, log: Path,
                 threads: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "innerpissa.cli", "serve", "--model", model, "--adapter", f"sentiment={adapter}",
               "--host", "127.0.0.1", "--port", str(self.port), "--max-batch", str(max_batch), "--max-queue",
               str(max_queue), "--max-tokens", str(max_tokens), "--log-level", "warning"]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 300:
                raise RuntimeError("the server did not come up in 300 s")
            time.sleep(0.2)
        self.model = httpx.get(f"{self.url}/v1/models").json()["data"][0]["id"]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats", timeout=10).json()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def prompts(n: int) -> list[str]:
    from innerpissa.eval.generation import load_neutral_prompts

    base = load_neutral_prompts("all")
    return [base[i % len(base)] for i in range(n)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else float("nan")


async def throughput_run(server: Server, requests: list[dict], clients: int, deadline: float) -> dict:
    """`requests` spread over `clients` concurrent clients, each one request after another."""
    lat, tokens, failed = [], 0, 0
    queue = list(enumerate(requests))
    before = server.stats()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, failed
        while queue and time.monotonic() < deadline:
            _, body = queue.pop(0)
            t0 = time.perf_counter()
            r = await http.post(f"{server.url}/v1/chat/completions", json=body)
            if r.status_code != 200:
                failed += 1
                continue
            lat.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - t0
    after = server.stats()
    steps = after["steps"] - before["steps"]
    sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    return {"clients": clients, "requests": len(lat), "failed": failed, "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2), "p50_s": round(pct(lat, 0.5), 3),
            "p95_s": round(pct(lat, 0.95), 3), "steps": steps,
            "mean_batch": round(sum(k * v for k, v in sizes.items()) / steps, 2) if steps else 0.0,
            "max_batch": max((k for k, v in sizes.items() if v > 0), default=0)}


def throughput(args, adapter: Path) -> dict:
    texts = prompts(args.requests)
    out: dict = {"model": args.model, "requests": args.requests, "max_tokens": args.max_tokens, "runs": {}}
    deadline = time.monotonic() + args.max_seconds
    server = Server(args.model, adapter, args.max_batch, max(args.requests, 64), args.max_tokens,
                    Path(args.log_dir) / "serve-throughput.log", args.threads)
    try:
        # warm-up: a few requests, not timed
        warm = [{"model": server.model, "messages": [{"role": "user", "content": t}], "max_tokens": 4,
                 "temperature": 0, "steer": {"sentiment": 0.5}} for t in texts[:4]]
        asyncio.run(throughput_run(server, warm, 4, deadline))
        for label, cs in (("mixed", MIXED), ("zero", (0.0,))):
            for n in args.clients:
                reqs = [{"model": server.model, "messages": [{"role": "user", "content": t}],
                         "max_tokens": args.max_tokens, "temperature": 0, "steer": {"sentiment": cs[i % len(cs)]}}
                        for i, t in enumerate(texts)]
                res = asyncio.run(throughput_run(server, reqs, n, deadline))
                out["runs"][f"{label}@{n}"] = res
                print(f"{label:5s} clients {n:2d}: {res['tokens_per_s']:7.2f} tok/s  p50 {res['p50_s']:.2f} s  "
                      f"p95 {res['p95_s']:.2f} s  batch mean {res['mean_batch']} max {res['max_batch']}  "
                      f"({res['requests']} requests, {res['tokens']} tokens, {res['seconds']} s)", flush=True)
                if time.monotonic() > deadline:
                    print("stopped: --max-seconds reached")
                    break
    finally:
        server.close()
    runs, top = out["runs"], max(args.clients)
    if f"mixed@{top}" in runs and f"zero@{top}" in runs and "mixed@1" in runs:
        out["mixed_vs_zero"] = round(runs[f"mixed@{top}"]["tokens_per_s"] / runs[f"zero@{top}"]["tokens_per_s"], 3)
        out["mixed_vs_one_at_a_time"] = round(runs[f"mixed@{top}"]["tokens_per_s"] / runs["mixed@1"]["tokens_per_s"], 3)
        print(f"mixed@{top} / zero@{top} = {out['mixed_vs_zero']} (target >= 0.8); mixed@{top} / mixed@1 = "
              f"{out['mixed_vs_one_at_a_time']} (target >= 3)")
    return out


# ------------------------------------------------------------------------------------------------ soak


def malformed(model: str) -> list[tuple[object, str]]:
    """(body, the field its 4xx must name); a str body is sent raw."""
    msg = [{"role": "user", "content": "Describe a park."}]
    ok = {"model": model, "messages": msg, "max_tokens": 4}
    return [
        ({**ok, "steer": {"nosuch": 1.0}}, "steer.nosuch"),
        ({**ok, "steer": {"sentiment": 99.0}}, "steer.sentiment"),
        ({**ok, "steer": {"sentiment": "high"}}, "steer.sentiment"),
        (json.dumps({**ok, "steer": {"sentiment": 0}}).replace('"sentiment": 0', '"sentiment": NaN'), "steer.sentiment"),
        ({**ok, "messages": []}, "messages"),
        ({**ok, "messages": [{"role": "user", "content": 7}]}, "messages.0.content"),
        ({**ok, "temperature": "hot"}, "temperature"),
        ({**ok, "max_tokens": -3}, "max_tokens"),
        ({**ok, "top_p": 1.5}, "top_p"),
        ({**ok, "stream": 1}, "stream"),
        ({**ok, "frequency_penalty": 0.5}, "frequency_penalty"),
        ({**ok, "model": "nope"}, "model"),
        ("{broken", "body"),
        ({**ok, "messages": [{"role": "user", "content": "x " * 20000}]}, "messages"),
    ]


async def soak_run(server: Server, args) -> dict:
    rng = random.Random(args.seed)
    bad = malformed(server.model)
    texts = prompts(64)
    counts = {"ok": 0, "malformed_ok": 0, "malformed_wrong": 0, "disconnected": 0, "busy": 0, "other": 0}
    wrong: list[str] = []
    rss: list[tuple[int, float]] = []
    todo = list(range(args.requests))
    done = 0
    deadline = time.monotonic() + args.max_seconds

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal done
        if rng.random() < args.malformed:
            body, param = bad[i % len(bad)]
            kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {"json": body}
            r = await http.post(f"{server.url}/v1/chat/completions", **kw)
            err = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
            if 400 <= r.status_code < 500 and err.get("param") == param:
                counts["malformed_ok"] += 1
            else:
                counts["malformed_wrong"] += 1
                wrong.append(f"{param}: {r.status_code} {r.text[:120]}")
            return
        body = {"model": server.model, "messages": [{"role": "user", "content": texts[i % len(texts)]}],
                "max_tokens": args.max_tokens, "temperature": rng.choice([0.0, 0.8]), "seed": i,
                "steer": {"sentiment": round(rng.uniform(-1, 1), 2)}, "stream": rng.random() < 0.5}
        if body["stream"] and rng.random() < args.disconnect:
            async with http.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_lines():
                    break  # the client goes away after the first chunk
            counts["disconnected"] += 1
            return
        if not body["stream"] and rng.random() < args.disconnect / 2:
            try:  # the client gives up before the answer comes
                await http.post(f"{server.url}/v1/chat/completions", json=body, timeout=0.05)
            except httpx.TimeoutException:
                counts["disconnected"] += 1
                return
            counts["ok"] += 1
            return
        r = await http.post(f"{server.url}/v1/chat/completions", json=body)
        if r.status_code == 200:
            counts["ok"] += 1
        elif r.status_code == 503:
            counts["busy"] += 1
        else:
            counts["other"] += 1
            wrong.append(f"valid request: {r.status_code} {r.text[:120]}")

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while todo and time.monotonic() < deadline:
            i = todo.pop(0)
            await one(http, i)
            done += 1
            if done % max(1, args.requests // 20) == 0:
                rss.append((done, server.rss_mb()))
                print(f"  {done} requests, RSS {rss[-1][1]:.0f} MB", flush=True)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(args.clients)))
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    idle = None
    for _ in range(100):  # rows of disconnected clients leave at the engine's next step
        s = server.stats()
        if s["running"] == 0 and s["waiting"] == 0 and s["cache_rows"] == 0:
            idle = s
            break
        await asyncio.sleep(0.1)
    warm = next((m for n, m in rss if n >= args.requests // 10), rss[0][1] if rss else float("nan"))
    late = [m for n, m in rss if n >= args.requests // 2]
    growth = (max(late) / warm - 1) if late else float("nan")
    out = {"requests": done, "seconds": round(wall, 1), "counts": counts, "alive": server.alive(),
           "leaked_rows": None if idle is None else idle["cache_rows"], "idle_after": idle is not None,
           "rss_mb": [(n, round(m, 1)) for n, m in rss], "rss_growth_after_warmup": round(growth, 4),
           "wrong": wrong[:20], "finished": (idle or server.stats())["finished"]}
    out["pass"] = bool(out["alive"] and idle is not None and counts["malformed_wrong"] == 0 and counts["other"] == 0
                       and growth <= 0.10)
    return out


def soak(args, adapter: Path) -> dict:
    server = Server(args.model, adapter, args.max_batch, 64, max(args.max_tokens, 16),
                    Path(args.log_dir) / "serve-soak.log", args.threads)
    try:
        res = asyncio.run(soak_run(server, args))
    finally:
        server.close()
    c = res["counts"]
    print(f"soak: {res['requests']} requests in {res['seconds']} s: {c}; server alive {res['alive']}, rows held after "
          f"{res['leaked_rows']}, RSS growth after warm-up {100 * res['rss_growth_after_warmup']:.1f} %: "
          f"{'PASS' if res['pass'] else 'FAIL'}")
    for w in res["wrong"]:
        print("  wrong:", w)
    return res


def greedy(args, adapter: Path) -> dict:
    """`innerpissa generate`'s continuations vs the server's greedy ones (in this process, on loopback)."""
    import threading

    import innerpissa as ip
    from innerpissa.eval.generation import generate_sweep, load_neutral_prompts
    from innerpissa.serve.launch import Serve, background, build_app
    from innerpissa.steering import AdapterSteerer

    texts, cs = load_neutral_prompts("test")[:args.requests], (-1.0, 0.0, 1.0)
    model, tok = ip.load_model(args.model)
    ip.load_adapter(model, adapter)
    want = {}
    for p in texts:  # what `innerpissa generate --prompt P --coeffs -1 0 1` computes
        df = generate_sweep(model, tok, [p], AdapterSteerer(model), list(cs), args.max_tokens)
        want.update({(p, float(c)): t for c, t in zip(df["c"], df["continuation"], strict=True)})
    del model
    app = build_app(Serve(adapter=(f"sentiment={adapter}",), model=args.model, threads=args.threads))
    got: dict[str, dict] = {"one at a time": {}, "three at a time": {}, "all at once": {}}
    with background(app) as url:
        name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]

        def ask(where: dict, p: str, c: float) -> None:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=3600, json={
                "model": name, "messages": [{"role": "user", "content": p}], "max_tokens": args.max_tokens,
                "temperature": 0, "steer": {"sentiment": c}})
            where[(p, c)] = r.json()["choices"][0]["message"]["content"].strip()

        def together(where: dict, keys: list) -> None:
            threads = [threading.Thread(target=ask, args=(where, p, c)) for p, c in keys]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        for p in texts:
            for c in cs:
                ask(got["one at a time"], p, c)
            together(got["three at a time"], [(p, c) for c in cs])
        together(got["all at once"], list(want))
        stats = httpx.get(f"{url}/stats").json()
    out = {"prompts": len(texts), "max_tokens": args.max_tokens, "max_batch_reached": stats["max_batch_reached"],
           "identical": {k: sum(v[key] == want[key] for key in want) for k, v in got.items()}, "of": len(want)}
    print(f"greedy continuations identical to innerpissa generate's (of {len(want)}): {out['identical']}; "
          f"largest batch {stats['max_batch_reached']}")
    for k, v in got.items():
        for key in want:
            if v[key] != want[key]:
                print(f"  {k} differs at {key}:\n    generate: {want[key]}\n    server:   {v[key]}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "soak", "greedy"])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", type=Path, default=None, help="adapter folder (default: a random one of the "
                    "smollm2-cpu preset's shape)")
    ap.add_argument("--clients", type=int, nargs="+", default=None, help="throughput: 1 4 16; soak: 16")
    ap.add_argument("--requests", type=int, default=None, help="throughput: 64; soak: 2000; greedy: prompts, 8")
    ap.add_argument("--max-tokens", type=int, default=None, help="throughput: 32; soak: 8")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=1800, help="stop sending new requests after this long")
    ap.add_argument("--malformed", type=float, default=0.10)
    ap.add_argument("--disconnect", type=float, default=0.10, help="soak: share of streams closed after one chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: one per core)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--log-dir", default=tempfile.gettempdir(), help="where the server's log goes")
    args = ap.parse_args(argv)
    soak_mode = args.what == "soak"
    args.clients = args.clients or ([16] if soak_mode else [1, 4, 16])
    args.requests = args.requests or {"soak": 2000, "greedy": 8}.get(args.what, 64)
    args.max_tokens = args.max_tokens or (8 if soak_mode else 32)
    if soak_mode:
        args.clients = args.clients[0]
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or make_adapter(args.model, Path(tmp) / "adapter")
        res = {"soak": soak, "greedy": greedy, "throughput": throughput}[args.what](args, adapter)
    res.update({"what": args.what, "model": args.model, "cpu_count": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_1m": os.getloadavg()[0]})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
