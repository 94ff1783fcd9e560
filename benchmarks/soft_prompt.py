"""Benchmark: soft prompts on the embedded model, measured side by side in one run.

- train step of frozenlm (loss and lm head on target tokens only, Adafactor) vs PEFT
  `PromptTuningConfig` (full-vocabulary logits over the whole sequence, AdamW as in its
  examples) on the same backbone weights, batch 8, the same token ids, P=20; steps interleaved so
  machine noise hits both alike. frozenlm runs the prompt and the text every row shares (chat
  template, instruction) once and reuses their keys and values for the 8 rows (`batch_loss`);
  PEFT runs every row in full, padded. Peak memory of each is measured in a fresh subprocess:
  the peak RSS during the steps minus the RSS before them (model loaded). Target
  `step_ratio` <= 0.7.
- train step of the deep prompt (key/value prefixes at every layer, `--method prefix`, its default
  length and recipe) vs the soft prompt's, both through the training loop's own step on the same
  rows, interleaved. Target `prefix_step_ratio` <= 1.2.
- scoring with the prompt KV cache vs recomputing the prompt, P=100, inputs of 64 tokens.
  Target `cache_speedup` >= 1.5.
- 32 rows of 4 tasks (each row its task's prompt) in batches of 8 sorted by length, across tasks
  (mixed) vs within each task. Target `mixed_speedup` >= 1.0 with equal scores.

    python benchmarks/soft_prompt.py --out soft_prompt.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
from transformers import AutoModelForCausalLM

from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import Backbone, embedded_model_folder
from frozenlm.codec import to_json
from frozenlm.engine.batching import Row, token_budget_batches
from frozenlm.engine.loss import batch_loss
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.engine.scoring import ScoreRequest, score_batch
from frozenlm.engine.splice import IGNORE_INDEX
from frozenlm.evaluation.evaluate import EvalConfig
from frozenlm.measure import PeakMemory
from frozenlm.plugins.prefix import PrefixConfig
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.prompts.render import PromptConfig, Prompter
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import make_optimizer

P_TRAIN, P_CACHE, BATCH = 20, 100, 8


def training_batch(backbone: Backbone) -> tuple[list[list[int]], list[list[int]]]:
    """8 sentiment train rows as (prompt ids, target ids), zero-shot prompts."""
    task = load_task("sentiment")
    prompter = Prompter(
        task.spec, backbone.tokenizer, PromptConfig(), max_tokens=1024, answer_tokens=4
    )
    rows = list(task.train[:BATCH])
    prefixes = [prompter.render(ex).ids for ex in rows]
    targets = [prompter.continuation_ids(prompter.demo_answer(ex)) for ex in rows]
    return prefixes, targets


def frozenlm_step_fn(backbone: Backbone, prefixes, targets) -> Callable[[], float]:
    spec = load_task("sentiment").spec
    plugin = SoftPromptSet.from_config(SoftPromptConfig(length=P_TRAIN), backbone, [spec], seed=0)
    optimizer = make_optimizer(list(plugin.parameters()), TrainConfig())

    def step() -> float:
        prompt = plugin.prompt(spec.name)  # one object for every row: computed once
        loss = batch_loss(backbone, [Row(p, prompt) for p in prefixes], targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def loop_step_fn(backbone: Backbone, method: str, config: dict) -> Callable[[], float]:
    """One optimizer step of the training loop itself (`optimizer_step`) for a new plug-in of
    `method`, over the same 8 sentiment rows every call, with that kind's recipe."""
    from dataclasses import replace

    from frozenlm.plugins.registry import new_plugin, recipe
    from frozenlm.training.loop import Run, optimizer_step
    from frozenlm.training.rows import DataOrder, training_rows

    task = load_task("sentiment")
    task = replace(task, train=task.train[:BATCH])
    train_config = TrainConfig(batch_size=BATCH, **recipe(method))
    plugin = new_plugin(method, config, backbone, [task.spec], seed=0)
    rows = training_rows(backbone, [task], replace(train_config, balance="none"))
    run = Run(
        backbone, plugin, [task], train_config, Path("unused"), {},
        make_optimizer(plugin.param_groups(train_config.lr), train_config), rows,
        DataOrder(len(rows), 0), [float(g["lr"]) for g in plugin.param_groups(train_config.lr)],
    )  # fmt: skip
    return lambda: optimizer_step(run, 0)


def peft_step_fn(prefixes, targets) -> Callable[[], float]:
    base = AutoModelForCausalLM.from_pretrained(embedded_model_folder(), dtype=torch.float32)
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=P_TRAIN,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    model = get_peft_model(base, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    # The usual PEFT recipe: right-padded ids, labels -100 except the target tokens.
    width = max(len(p) + len(t) for p, t in zip(prefixes, targets, strict=True))
    ids = torch.zeros(len(prefixes), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for b, (p, t) in enumerate(zip(prefixes, targets, strict=True)):
        row = p + t
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
        labels[b, len(p) : len(row)] = torch.tensor(t)

    def step() -> float:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def peak_memory_mb(which: str, steps: int) -> float:
    """Run `steps` train steps of `which` in a fresh process; peak RSS growth during them."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-of", which, "--steps", str(steps)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def memory_child(which: str, steps: int) -> None:
    backbone = Backbone.load()
    prefixes, targets = training_batch(backbone)
    step = (
        frozenlm_step_fn(backbone, prefixes, targets)
        if which == "frozenlm"
        else peft_step_fn(prefixes, targets)
    )
    if which == "peft":
        del backbone
    gc.collect()
    with PeakMemory() as peak:
        for _ in range(steps):
            step()
    print(peak.mb)


def padding(batches: list[list[ScoreRequest]]) -> float:
    """Fraction of padded positions in left-padded batches of these rows."""
    lengths = [[sum(len(p) for p in r.prefix) for r in b] for b in batches]
    padded = sum(max(b) * len(b) for b in lengths)
    return 1 - sum(map(sum, lengths)) / padded


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--steps", type=int, default=6, help="timed train steps per side")
    parser.add_argument("--memory-of", choices=["frozenlm", "peft"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        memory_child(args.memory_of, args.steps)
        return
    if not args.out:
        parser.error("--out is required")
    torch.manual_seed(0)
    backbone = Backbone.load()
    result: dict[str, object] = {"backbone": backbone.name, "threads": torch.get_num_threads()}

    # 1. Train step, interleaved.
    prefixes, targets = training_batch(backbone)
    ours, theirs = frozenlm_step_fn(backbone, prefixes, targets), peft_step_fn(prefixes, targets)
    ours(), theirs()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(args.steps):
        ours_s.append(timed(ours))
        theirs_s.append(timed(theirs))
    result |= {
        "train_batch": BATCH,
        "prompt_length": P_TRAIN,
        "mean_tokens_per_row": sum(len(p) + len(t) for p, t in zip(prefixes, targets, strict=True))
        / BATCH,
        "frozenlm_step_s": statistics.median(ours_s),
        "peft_step_s": statistics.median(theirs_s),
    }
    result["step_ratio"] = result["frozenlm_step_s"] / result["peft_step_s"]  # type: ignore[operator]
    result["frozenlm_peak_mb"] = peak_memory_mb("frozenlm", 3)
    result["peft_peak_mb"] = peak_memory_mb("peft", 3)

    # 1b. Deep prompt step vs soft prompt step, both through the loop's own step.
    soft_config, prefix_config = SoftPromptConfig(), PrefixConfig()
    soft_step = loop_step_fn(backbone, "soft-prompt", to_json(soft_config))
    prefix_step = loop_step_fn(backbone, "prefix", to_json(prefix_config))
    soft_step(), prefix_step()  # warm-up
    soft_s, prefix_s = [], []
    for _ in range(args.steps):
        soft_s.append(timed(soft_step))
        prefix_s.append(timed(prefix_step))
    result |= {
        "soft_prompt_length": soft_config.length,
        "prefix_length": prefix_config.length,
        "soft_step_s": statistics.median(soft_s),
        "prefix_step_s": statistics.median(prefix_s),
    }
    result["prefix_step_ratio"] = result["prefix_step_s"] / result["soft_step_s"]  # type: ignore[operator]

    # 2. Prompt KV cache: P=100, inputs of 64 tokens, 32 rows in batches of 8.
    generator = torch.Generator().manual_seed(0)
    soft = torch.randn(P_CACHE, backbone.hidden_size, generator=generator) * 0.02
    inputs = torch.randint(1000, 20000, (32, 64), generator=generator).tolist()
    labels = [[2731], [3524]]
    chunks = [inputs[i : i + 8] for i in range(0, len(inputs), 8)]

    def uncached() -> list[torch.Tensor]:
        return [
            s.logprobs
            for c in chunks
            for s in score_batch(backbone, [ScoreRequest([soft, x], labels) for x in c])
        ]

    def cached() -> list[torch.Tensor]:
        shared = PrefixCache.compute(backbone, [soft])
        return [
            s.logprobs
            for c in chunks
            for s in score_batch(backbone, [ScoreRequest([x], labels) for x in c], shared)
        ]

    same = all(torch.allclose(a, b, atol=1e-4) for a, b in zip(cached(), uncached(), strict=True))
    cached_s = min(timed(cached) for _ in range(3))
    uncached_s = min(timed(uncached) for _ in range(3))
    result |= {
        "cached_s": cached_s,
        "uncached_s": uncached_s,
        "cache_speedup": uncached_s / cached_s,
        "cache_equal_scores": same,
    }

    # 3. Mixed-task batch of 4 tasks vs 4 per-task batches (8 rows each).
    names = ["sentiment", "topic", "trec", "tweets"]
    tasks = [load_task(n) for n in names]
    prompts = SoftPromptSet.from_config(
        SoftPromptConfig(length=P_TRAIN), backbone, [t.spec for t in tasks], seed=0
    )
    per_task: list[list[ScoreRequest]] = []
    for task in tasks:
        prompter = Prompter(
            task.spec, backbone.tokenizer, PromptConfig(), max_tokens=1024, answer_tokens=4
        )
        candidates = [prompter.continuation_ids(v) for v in task.spec.labels.values()]
        examples = list(task.test[:8])
        softs = prompts.soft_tokens(task.spec, examples)
        per_task.append(
            [
                ScoreRequest([s.detach(), prompter.render(ex).ids], candidates)
                for s, ex in zip(softs, examples, strict=True)
            ]
        )
    # Both sides batch rows sorted by length, 8 rows a batch: per-task batching can only group
    # rows of one task, mixed batching groups rows of any task, so lengths in a batch match
    # better and less padding is computed.
    budget = EvalConfig()
    rows = [r for group in per_task for r in group]  # task-major
    lengths = [sum(len(p) for p in r.prefix) for r in rows]
    mixed_batches = token_budget_batches(lengths, budget.batch_tokens, BATCH)
    task_batches = [
        [
            [group[i] for i in b]
            for b in token_budget_batches(
                [sum(len(p) for p in r.prefix) for r in group], budget.batch_tokens, BATCH
            )
        ]
        for group in per_task
    ]

    def separate() -> list[torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for group in task_batches:
            for batch in group:
                for request, scores in zip(batch, score_batch(backbone, batch), strict=True):
                    out[id(request)] = scores.logprobs
        return [out[id(r)] for r in rows]

    def mixed() -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        for batch in mixed_batches:
            for i, scores in zip(
                batch, score_batch(backbone, [rows[i] for i in batch]), strict=True
            ):
                out[i] = scores.logprobs
        return out

    equal = all(torch.allclose(a, b, atol=1e-4) for a, b in zip(mixed(), separate(), strict=True))
    mixed_runs, separate_runs = [], []
    for _ in range(4):  # interleaved, so machine noise hits both alike
        mixed_runs.append(timed(mixed))
        separate_runs.append(timed(separate))
    mixed_s, separate_s = min(mixed_runs), min(separate_runs)
    result |= {
        "mixed_s": mixed_s,
        "per_task_s": separate_s,
        "mixed_speedup": separate_s / mixed_s,
        "mixed_padding": padding([[rows[i] for i in b] for b in mixed_batches]),
        "per_task_padding": padding([b for group in task_batches for b in group]),
        "mixed_batches": len(mixed_batches),
        "per_task_batches": sum(len(group) for group in task_batches),
        "mixed_equal_scores": equal,
    }

    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
