"""Benchmark: data-parallel training on this machine (1 process x 2 threads vs 2 ranks x 1
thread, gloo), the bytes each plug-in kind all-reduces per step, and what that predicts for 8
and 64 workers on a 10 Gbit/s network.

Both layouts train the same global batch (`--batch-size` rows per optimizer step: the 2 ranks
take half each) through the training loop's own `optimizer_step`, for the soft prompt and for
LoRA; reported: seconds per step (median of `--steps` after one warm-up step), samples/s and
the scaling efficiency (1-process time / 2-rank time, over the 2x the ranks bring; both use
both cores, so 1.0 means the ranks cost nothing extra). Bytes per step = 4 x trainable
parameters (fp32 gradients, one flat all-reduce) for every kind, full fine-tuning included.
The estimate: ring all-reduce sends 2 (W - 1) / W x bytes per worker per step, at 1.25 GB/s
plus 2 (W - 1) x 50 us of latency, not overlapped with compute; per-worker compute stays the
measured step (each worker keeps its micro-batch: weak scaling).

    python benchmarks/distributed.py --out benchmarks/results/distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from frozenlm.atomic import atomic_write_json

LINK_BYTES_PER_S = 10e9 / 8
LATENCY_S = 50e-6


def _build(kind: str, backbone: Any, task: Any) -> tuple[Any, Any]:
    """(backbone to train through, plug-in) for `kind`."""
    from frozenlm.devices import seeded_rng
    from frozenlm.plugins.registry import new_plugin
    from frozenlm.training.finetune import LoraSettings, full_copy, lora_copy

    if kind == "lora":
        with seeded_rng(0):
            return lora_copy(backbone, LoraSettings())
    if kind == "full-ft":
        with seeded_rng(0):
            return full_copy(backbone)
    return backbone, new_plugin(kind, {}, backbone, [task.spec], 0)


def _worker(rank: int, world: int, port: int, kind: str, args: dict[str, Any], out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ |= {"RANK": str(rank), "WORLD_SIZE": str(world)}
    torch.set_num_threads(args["threads"])
    from frozenlm.backbone import resolve_backbone
    from frozenlm.tasks import load_task
    from frozenlm.training.config import TrainConfig
    from frozenlm.training.distributed import init_from_env
    from frozenlm.training.loop import optimizer_step, setup

    if world > 1:
        init_from_env()
    backbone = resolve_backbone(args["backbone"])
    task = load_task("sentiment")
    trained, plugin = _build(kind, backbone, task)
    optimizer = {"lora": ("adamw", 1e-3), "full-ft": ("adamw", 5e-5)}.get(kind, ("adamw", 1e-2))
    config = TrainConfig(steps=args["steps"] + 1, batch_size=args["batch_size"] // world,
                         optimizer=optimizer[0], lr=optimizer[1], recover=False,
                         eval_every=10_000, save_last=False)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        run, _ = setup(trained, plugin, [task], config, Path(folder), meta={"kind": kind})
        times = []
        for step in range(args["steps"] + 1):
            start = time.perf_counter()
            optimizer_step(run, step)
            times.append(time.perf_counter() - start)
    if rank == 0:
        atomic_write_json(out, {"step_s": statistics.median(times[1:]), "times": times})
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(kind: str, world: int, args: dict[str, Any]) -> dict[str, Any]:
    threads = 2 // world
    out = Path(tempfile.mkdtemp()) / "result.json"
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker, args=(r, world, port, kind, args | {"threads": threads}, str(out))
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"{kind} with {world} ranks failed")
    result = json.loads(out.read_text())
    result |= {"ranks": world, "threads_per_rank": threads}
    result["samples_per_s"] = args["batch_size"] / result["step_s"]
    return result


def trainable(kind: str, backbone_name: str) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.tasks import load_task

    backbone = resolve_backbone(backbone_name)
    if kind == "full-ft":
        return backbone.num_parameters
    _, plugin = _build(kind, backbone, load_task("sentiment"))
    return int(plugin.num_trainable())


def estimate(step_s: float, nbytes: int, workers: int) -> dict[str, float]:
    sent = 2 * (workers - 1) / workers * nbytes
    comm = sent / LINK_BYTES_PER_S + 2 * (workers - 1) * LATENCY_S
    return {
        "comm_s": round(comm, 5),
        "step_s": round(step_s + comm, 4),
        "efficiency": round(step_s / (step_s + comm), 4),
        "steps_per_s": round(1 / (step_s + comm), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    common = {"backbone": args.backbone, "steps": args.steps, "batch_size": args.batch_size}
    timed: dict[str, Any] = {}
    for kind in ("soft-prompt", "lora"):
        one, two = measure(kind, 1, common), measure(kind, 2, common)
        timed[kind] = {
            "1x2": one,
            "2x1": two,
            "scaling_efficiency": round(one["step_s"] / two["step_s"], 3),
        }
        print(kind, json.dumps({k: v for k, v in timed[kind].items()}), flush=True)
    kinds = ("soft-prompt", "prefix", "id-pt", "recursion", "lora", "full-ft")
    sizes = {kind: trainable(kind, args.backbone) for kind in kinds}
    per_step = {kind: {"trainable": n, "bytes_all_reduced": 4 * n} for kind, n in sizes.items()}
    # compute per worker: the measured 1-process step for the kinds timed; the soft prompt's
    # for the other prompt-style kinds (their backbone forward dominates), LoRA's for full-FT
    # (a lower bound: a full fine-tuning step also updates every weight)
    compute = {k: timed["soft-prompt"]["1x2"]["step_s"] for k in kinds}
    compute["lora"] = compute["full-ft"] = timed["lora"]["1x2"]["step_s"]
    scaling = {
        kind: {f"{w}_workers": estimate(compute[kind], 4 * sizes[kind], w) for w in (8, 64)}
        for kind in kinds
    }
    out = {
        "backbone": args.backbone,
        "global_batch": args.batch_size,
        "timed": timed,
        "per_step": per_step,
        "network": {"bytes_per_s": LINK_BYTES_PER_S, "latency_s": LATENCY_S, "ring": True},
        "estimate": scaling,
    }
    atomic_write_json(Path(args.out), out)
    print(json.dumps(scaling, indent=1))


if __name__ == "__main__":
    main()
