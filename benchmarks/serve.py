"""Benchmark: `frozenlm serve` with rows of four tasks' plug-ins mixed in one forward, against
batching only within a task and against one request at a time.

A real server process (`frozenlm serve`) on loopback per policy, a real HTTP client (httpx2,
what the openai client uses):
`--clients` concurrent clients send `--requests` requests in all, cycling over four plug-ins, in
two workloads: the issue's mix (sentiment and topic soft prompts through /v1/classify; trec's
and trivia's asked for a short answer through /v1/completions with `--max-tokens`) and all four
asked for short answers (decoding-heavy). The plug-ins are trained for one step (their quality is
not what is measured, their shape is: the real soft prompts of `frozenlm train`). Reported per
policy: requests/s, generated tokens/s, p50/p95/p99 latency, status codes; and the ratios the
targets name: mixed >= 2x single and >= 1.3x per-task in throughput, p95 no worse than per-task,
zero errors.

    python benchmarks/serve.py --out benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the openai package and FastAPI's TestClient use

from frozenlm.atomic import atomic_write_json

WORKLOADS: dict[str, dict[str, str]] = {
    "classify+generate": {
        "sentiment": "classify",
        "trec": "generate",
        "topic": "classify",
        "trivia": "generate",
    },
    "generate": {
        "sentiment": "generate",
        "trec": "generate",
        "tweets": "generate",
        "trivia": "generate",
    },
}
"""Each plug-in's requests: label probabilities (/v1/classify) or a short answer written by the
model (/v1/completions; a classification task's plug-in then writes its label's verbalizer).
The first is the issue's mix; the second is all decoding, where sharing a forward saves most."""
TASKS = sorted({task for workload in WORKLOADS.values() for task in workload})


def train_plugins(folder: Path, backbone: str) -> None:
    """One-step soft prompts for every task of the workloads (kept in `folder`)."""
    for task in TASKS:
        if (folder / task / "best").is_dir():
            continue
        command = [sys.executable, "-m", "frozenlm", "--no-record", "train", "--task", task]
        command += ["--backbone", backbone, "--out", str(folder / task), "--steps", "1"]
        command += ["--batch-size", "2", "--eval-every", "1", "--eval-limit", "2", "--overwrite"]
        subprocess.run(command, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, backbone: str, policy: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "frozenlm", "--no-record", "serve", "--backbone", backbone]
    for task in TASKS:
        command += ["--plugin", str(folder / task)]
    command += ["--port", str(port), "--policy", policy, "--max-queue", "1024"]
    log = (folder / f"server-{policy}.log").open("wb")  # its access log and any error
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"the server for policy {policy} exited with {server.returncode}")
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("the server did not start within 300 s")


def bodies(workload: dict[str, str], max_tokens: int) -> list[tuple[str, dict[str, Any]]]:
    """Requests of every task of `workload`, interleaved, cycled by the clients."""
    from frozenlm.tasks import load_task

    out = []
    for task, kind in workload.items():
        spec = load_task(task)
        for i, example in enumerate(spec.test[:16]):
            fields = dict(example.fields)
            if kind == "classify":
                body = {"route": "/v1/classify", "model": task, "input": fields, "i": i}
                out.append((task, body))
            else:
                (text,) = fields.values()  # (both generating tasks read one field)
                body = {"model": task, "prompt": text, "max_tokens": max_tokens, "i": i}
                out.append((task, {"route": "/v1/completions", **body}))
    order = sorted(range(len(out)), key=lambda k: (out[k][1]["i"], list(workload).index(out[k][0])))
    return [out[k] for k in order]  # interleaved: sentiment, trec, topic, trivia, ...


async def load(
    port: int, workload: dict[str, str], requests: int, clients: int, max_tokens: int
) -> dict[str, Any]:
    work = bodies(workload, max_tokens)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    tokens = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for k in range(requests):
        queue.put_nowait(k)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            k = queue.get_nowait()
            _, body = work[k % len(work)]
            payload = {key: v for key, v in body.items() if key not in ("route", "i")}
            start = time.perf_counter()
            try:
                reply = await http.post(body["route"], json=payload)
                statuses[str(reply.status_code)] += 1
                if reply.status_code == 200 and body["route"] == "/v1/completions":
                    tokens += reply.json()["usage"]["completion_tokens"]
            except httpx.HTTPError as err:
                statuses[type(err).__name__] += 1
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": requests,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 3),
        "generated_tokens_per_s": round(tokens / seconds, 2),
        "latency_s": {"p50": round(q[49], 3), "p95": round(q[94], 3), "p99": round(q[98], 3)},
        "statuses": dict(statuses),
        "errors": sum(n for s, n in statuses.items() if s != "200"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--plugins", default="runs/bench-serve-plugins", help="kept between runs")
    parser.add_argument("--policies", default="mixed,per-task,single")
    args = parser.parse_args()

    folder = Path(args.plugins)
    train_plugins(folder, args.backbone)
    results: dict[str, dict[str, Any]] = {name: {} for name in WORKLOADS}
    for policy in args.policies.split(","):
        port = free_port()
        server = start_server(folder, args.backbone, policy, port)
        try:
            for name, workload in WORKLOADS.items():
                warm = min(8, args.requests)
                asyncio.run(load(port, workload, warm, args.clients, args.max_tokens))
                results[name][policy] = asyncio.run(
                    load(port, workload, args.requests, args.clients, args.max_tokens)
                )
                print(name, policy, json.dumps(results[name][policy]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    out: dict[str, Any] = {
        "backbone": args.backbone,
        "clients": args.clients,
        "workloads": WORKLOADS,
        "max_tokens": args.max_tokens,
        "cpu_count": os.cpu_count(),
        "results": results,
        "ratios": {},
    }
    for name, by_policy in results.items():
        if not {"mixed", "per-task", "single"} <= set(by_policy):
            continue
        mixed, per_task, single = by_policy["mixed"], by_policy["per-task"], by_policy["single"]
        out["ratios"][name] = {
            "throughput_mixed_vs_single": round(
                mixed["requests_per_s"] / single["requests_per_s"], 2
            ),
            "throughput_mixed_vs_per_task": round(
                mixed["requests_per_s"] / per_task["requests_per_s"], 2
            ),
            "p95_mixed_vs_per_task": round(
                mixed["latency_s"]["p95"] / per_task["latency_s"]["p95"], 2
            ),
        }
    first = out["ratios"].get("classify+generate")
    if first:
        out["targets"] = {
            "mixed >= 2x single": first["throughput_mixed_vs_single"] >= 2,
            "mixed >= 1.3x per-task": first["throughput_mixed_vs_per_task"] >= 1.3,
            "p95 no worse than per-task": first["p95_mixed_vs_per_task"] <= 1.0,
            "zero errors": all(
                r["errors"] == 0 for by_policy in results.values() for r in by_policy.values()
            ),
        }
    atomic_write_json(Path(args.out), out)
    print(json.dumps(out["ratios"]), json.dumps(out.get("targets", {})))


if __name__ == "__main__":
    main()
