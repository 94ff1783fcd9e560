"""Soak: `frozenlm serve` (mixed policy) under `--requests` requests from `--clients` clients,
with clients that hang up mid-stream among them: every status code seen, and the server's
resident memory sampled as it goes, to show it stops growing.

The same four plug-ins and request mix as `benchmarks/serve.py` (its `classify+generate`
workload); every `--hangup-every`-th request is a streamed completion whose client disconnects
after its first chunk.

    python benchmarks/serve_soak.py --out benchmarks/results/serve_soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil

from frozenlm.atomic import atomic_write_json
from serve import WORKLOADS, bodies, free_port, start_server, train_plugins


async def soak(
    port: int, pid: int, requests: int, clients: int, max_tokens: int, hangup_every: int
) -> dict[str, Any]:
    work = bodies(WORKLOADS["classify+generate"], max_tokens)
    statuses: Counter[str] = Counter()
    memory: list[dict[str, float]] = []
    process = psutil.Process(pid)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for k in range(requests):
        queue.put_nowait(k)
    done = 0
    start = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while not queue.empty():
            k = queue.get_nowait()
            _, body = work[k % len(work)]
            payload = {key: v for key, v in body.items() if key not in ("route", "i")}
            try:
                if hangup_every and k % hangup_every == 0:
                    stream = {"model": "trivia", "prompt": "Tell me a story.", "stream": True}
                    stream |= {"max_tokens": 200, "stop": []}
                    async with http.stream("POST", "/v1/completions", json=stream) as reply:
                        statuses[f"{reply.status_code} (hung up)"] += 1
                        async for _ in reply.aiter_lines():
                            break  # the first chunk, then hang up
                else:
                    reply = await http.post(body["route"], json=payload)
                    statuses[str(reply.status_code)] += 1
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1
            done += 1
            if done % 100 == 0:
                rss = process.memory_info().rss / 2**20
                memory.append({"requests": done, "seconds": round(time.perf_counter() - start, 1),
                               "rss_mb": round(rss, 1)})  # fmt: skip
                print(memory[-1], flush=True)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits
    ) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    seconds = time.perf_counter() - start
    # after the load: the server must be idle again (hung-up rows stopped, nothing queued)
    await asyncio.sleep(2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        health = (await http.get("/health")).json()
        metrics = (await http.get("/metrics")).text
    return {
        "requests": requests,
        "clients": clients,
        "seconds": round(seconds, 1),
        "statuses": dict(statuses),
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5")),
        "memory": memory,
        "health_after": health,
        "generated_tokens": [
            line
            for line in metrics.splitlines()
            if line.startswith("frozenlm_generated_tokens_total")
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--hangup-every", type=int, default=50)
    parser.add_argument("--plugins", default="runs/bench-serve-plugins")
    args = parser.parse_args()
    folder = Path(args.plugins)
    train_plugins(folder, args.backbone)
    port = free_port()
    server = start_server(folder, args.backbone, "mixed", port)
    try:
        result = asyncio.run(
            soak(port, server.pid, args.requests, args.clients, args.max_tokens, args.hangup_every)
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    result["backbone"] = args.backbone
    atomic_write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k != "memory"}))


if __name__ == "__main__":
    main()
