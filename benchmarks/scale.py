"""Benchmark: what each backbone costs, measured side by side in one run.

Each backbone is measured in a fresh subprocess (so load time and memory are its own):
- `load_s`: `Backbone.load(NAME)` from the converted safetensors cache; `rss_mb`: resident
  memory once loaded; `peak_rss_mb`: the process's peak over everything below.
- `score_examples_per_s`: calibrated zero-shot rank classification of sentiment test examples
  (`evaluate`), after a warm-up.
- `soft_prompt_step_s` and `lora_step_s`: one optimizer step of the soft prompt (P=20,
  Adafactor) and of PEFT's LoRA (r=8, AdamW) through the one training loop, batch 8 sentiment
  rows, steps interleaved so machine noise hits both alike (median of `--steps`, after one
  warm-up step each); `prompt_to_lora_step` is their ratio (below 1: prompt tuning is cheaper).
- `id_pt_overhead`: the ID-PT generator's (default MiniLM encoder, on inputs it has not seen)
  time to write 8 prompts over the backbone's time to score the same 8 rows
  (`benchmarks/id_pt.py`'s measure; target <= 0.05).

    python benchmarks/scale.py --out scale.json [--backbones tiny,default,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch

from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import Backbone
from frozenlm.backbones.catalog import KNOWN
from frozenlm.devices import seeded_rng
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.measure import peak_resident_mb
from frozenlm.plugins.prompt_generator import MiniLMEncoder, PromptGenerator, PromptGeneratorConfig
from frozenlm.plugins.registry import new_plugin
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.finetune import LoraSettings, lora_copy
from frozenlm.training.loop import Run, optimizer_step, setup

sys.path.insert(0, str(Path(__file__).parent))
from id_pt import TASKS, batch, measure


def _timed_step(run: Run, step: int) -> float:
    start = time.perf_counter()
    optimizer_step(run, step)
    return time.perf_counter() - start


def measure_one(name: str, examples: int, steps: int) -> dict[str, Any]:
    """Every cost of one backbone, in this process."""
    start = time.perf_counter()
    backbone = Backbone.load(name, device="cpu", dtype="float32")
    result: dict[str, Any] = {
        "backbone": backbone.name,
        "parameters": backbone.num_parameters,
        "load_s": time.perf_counter() - start,
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
    }
    task = load_task("sentiment")
    with torch.no_grad():
        # uniform: the scoring alone, without a dev pass to choose the calibration
        config = EvalConfig(calibrate=True, calibration="uniform", limit=examples)
        evaluate(backbone, task, replace(config, limit=4))  # warm-up
        report = evaluate(backbone, task, config)
    result["score_examples_per_s"] = report.n / report.seconds

    config = TrainConfig(steps=steps + 1, batch_size=8, eval_every=10_000, save_last=False)
    with tempfile.TemporaryDirectory() as tmp:
        soft = new_plugin("soft-prompt", {"length": 20}, backbone, [task.spec], seed=0)
        soft_run, _ = setup(backbone, soft, [task], config, Path(tmp) / "sp", meta={})
        with seeded_rng(0, backbone.device):
            tuned, weights = lora_copy(backbone, LoraSettings())
        lora_config = TrainConfig(
            steps=steps + 1,
            batch_size=8,
            eval_every=10_000,
            save_last=False,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.0,
        )
        lora_run, _ = setup(tuned, weights, [task], lora_config, Path(tmp) / "lora", meta={})
        soft_times, lora_times = [], []
        for step in range(steps + 1):  # step 0 is the warm-up
            soft_times.append(_timed_step(soft_run, step))
            lora_times.append(_timed_step(lora_run, step))
        del lora_run, tuned, weights
    result["soft_prompt_step_s"] = statistics.median(soft_times[1:])
    result["lora_step_s"] = statistics.median(lora_times[1:])
    result["prompt_to_lora_step"] = result["soft_prompt_step_s"] / result["lora_step_s"]

    tasks = [load_task(t) for t in TASKS]
    config = PromptGeneratorConfig()
    trained = PromptGenerator.from_config(config, backbone, [t.spec for t in tasks], seed=0)
    # New inputs every time (no cached encoder states): what a server pays for a new request.
    encoder = MiniLMEncoder(config.max_input_tokens, cache_size=0)
    generator = PromptGenerator(config, encoder, backbone.hidden_size).eval()
    generator.load_state_dict(trained.state_dict())
    with torch.no_grad():
        id_pt = measure(backbone, generator, batch(tasks), repeats=3)
    result["id_pt_overhead"] = id_pt["overhead"]
    result["id_pt"] = id_pt
    result["peak_rss_mb"] = peak_resident_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument(
        "--backbones",
        help="comma-separated names (default: tiny and every packaged backbone present)",
    )
    parser.add_argument("--examples", type=int, default=32, help="sentiment examples to score")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per method")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure one backbone, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.examples, args.steps)))
        return
    if not args.out:
        parser.error("--out is required")
    names = (
        args.backbones.split(",")
        if args.backbones
        else ["tiny", *[n for n, b in KNOWN.items() if b.present()]]
    )
    results: dict[str, Any] = {}
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--one", name]
        command += ["--examples", str(args.examples), "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{name}: {done.stderr.strip().splitlines()[-1]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]), file=sys.stderr, flush=True)
    out = {
        "machine": {"cpus": psutil.cpu_count(), "torch_threads": torch.get_num_threads()},
        "examples": args.examples,
        "steps": args.steps,
        "backbones": results,
        "target_id_pt_overhead": 0.05,
    }
    atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
