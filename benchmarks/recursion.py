"""Benchmark: a connector's training epoch with pass 1 cached against recomputing pass 1.

One connector, one task, `--examples` training rows in batches of `--batch-size` (an epoch),
through the training loop's own step (`training.loop.optimizer_step`). The first epoch fills
the pass-1 cache (in memory, as the disk cache is read the same way); then epochs with the
cache and epochs with pass 1 recomputed for every row alternate, `--epochs` of each, and the
median ratio is reported: `speedup` = recompute_s / cached_s; target >= 1.8.

Pass 2 (forward and backward through the frozen backbone) is what the cache cannot save, so
the ratio is bounded by (pass 1 + pass 2) / pass 2.

    python benchmarks/recursion.py --out recursion.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("FROZENLM_PASS1_CACHE", "off")  # memory only: nothing left on disk

from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import resolve_backbone
from frozenlm.devices import seeded_rng
from frozenlm.plugins.connector import Connector, ConnectorConfig
from frozenlm.plugins.pass_one import StateCache
from frozenlm.plugins.registry import new_plugin, plugin_meta, recipe
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import optimizer_step, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone", default=None, help="default: the embedded model")
    parser.add_argument("--task", default="trivia")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    backbone = resolve_backbone(args.backbone)
    task = load_task(args.task)
    task = type(task)(task.spec, task.train[: args.examples], task.dev[:4], task.test[:4])
    steps = args.examples // args.batch_size
    config = TrainConfig(
        steps=steps * (2 * args.epochs + 1),
        batch_size=args.batch_size,
        eval_every=10**6,
        recover=False,
        save_last=False,
        balance="none",
        **recipe("recursion"),
    )
    plugin_config = {"first_prompt": None}
    plugin = new_plugin("recursion", plugin_config, backbone, [task.spec], seed=0)
    assert isinstance(plugin, Connector)
    cache = StateCache(None)
    plugin.first.cache = cache
    plugin.train()
    meta = plugin_meta("recursion", plugin_config, backbone, [task], [args.task])
    with seeded_rng(0, backbone.device):
        run, _ = setup(backbone, plugin, [task], config, Path("unused"), meta=meta)
        step = 0

        def epoch(cached: bool) -> float:
            nonlocal step
            plugin.first.cache = cache if cached else None
            start = time.perf_counter()
            for _ in range(steps):
                optimizer_step(run, step)
                step += 1
            return time.perf_counter() - start

        first_epoch = epoch(cached=True)  # fills the cache
        cached_runs, recompute_runs = [], []
        for _ in range(args.epochs):
            recompute_runs.append(epoch(cached=False))
            cached_runs.append(epoch(cached=True))
    cached_s, recompute_s = statistics.median(cached_runs), statistics.median(recompute_runs)
    result = {
        "backbone": backbone.name,
        "task": args.task,
        "examples": args.examples,
        "batch_size": args.batch_size,
        "connector": ConnectorConfig().__dict__ | {"position": ConnectorConfig().position.value},
        "first_epoch_s": first_epoch,
        "cached_epoch_s": cached_runs,
        "recompute_epoch_s": recompute_runs,
        "speedup": recompute_s / cached_s,
        "target": 1.8,
        "cache_hits": cache.hits,
        "cache_misses": cache.misses,
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }
    atomic_write_json(args.out, result)
    print(
        f"epoch of {args.examples} rows: cached {cached_s:.2f} s, recomputing pass 1 "
        f"{recompute_s:.2f} s: {result['speedup']:.2f}x (first epoch {first_epoch:.2f} s)"
    )


if __name__ == "__main__":
    main()
