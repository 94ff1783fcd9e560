"""Quality of soft prompt tuning on the embedded model: frozenlm's default recipe (Lester et al.
2021) vs PEFT's PromptTuning with the settings of its examples, same steps, same split, same rows
in the same order, both scored by frozenlm's rank classification on the test split.

    python benchmarks/soft_prompt_quality.py --tasks sentiment,topic,trec --out quality.json

Each task's frozenlm run is kept under --runs (a `frozenlm train` output folder, so it can be
evaluated again with `frozenlm eval --plugin RUNS/TASK`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.plugins.registry import load_plugin
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin
from frozenlm.training.peft_prompt import PeftPromptConfig, train_peft_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sentiment,topic,trec")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--test-limit", type=int, default=500, help="test examples per task")
    parser.add_argument("--runs", default="runs/soft_prompt_quality", help="frozenlm run folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    backbone = Backbone.load()
    results: dict[str, Any] = {
        "backbone": backbone.name,
        "steps": args.steps,
        "batch_size": 8,
        "prompt_length": args.prompt_length,
        "test_limit": args.test_limit,
        "tasks": {},
    }
    test_config = EvalConfig(split="test", limit=args.test_limit, seed=args.seed)
    for name in args.tasks.split(","):
        task = load_task(name, seed=args.seed)
        row: dict[str, Any] = {}
        run = Path(args.runs) / name
        start = time.perf_counter()
        trained = train_plugin(
            backbone,
            [name],
            "soft-prompt",
            to_json(SoftPromptConfig(length=args.prompt_length)),
            TrainConfig(steps=args.steps, seed=args.seed),
            run,
            resume=(run / "last").exists(),
        )
        plugin, _ = load_plugin(run, backbone)
        ours = evaluate(backbone, task, test_config, plugin=plugin)  # type: ignore[arg-type]
        row["frozenlm"] = {
            "test": ours.metrics["accuracy"].to_json(),
            "best_dev": trained.best_metric,
            "best_step": trained.best_step,
            "steps_done": trained.steps_done,
            "train_s": time.perf_counter() - start,
        }
        peft = train_peft_prompt(
            backbone, task, PeftPromptConfig(args.prompt_length, args.steps, seed=args.seed)
        )
        theirs = evaluate(backbone, task, test_config, plugin=peft.plugin)
        row["peft"] = {
            "test": theirs.metrics["accuracy"].to_json(),
            "train_s": peft.seconds,
            "final_loss": sum(peft.losses[-10:]) / len(peft.losses[-10:]),
        }
        row["majority"] = ours.baseline["accuracy"].to_json()
        row["n"] = ours.n
        results["tasks"][name] = row
        atomic_write_json(args.out, results)  # after every task: partial results survive
        print(json.dumps({name: row}, indent=2), flush=True)


if __name__ == "__main__":
    main()
