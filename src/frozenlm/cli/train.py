"""`frozenlm train`: parse its options, train one plug-in on the tasks named, record the run.

Kept apart so the main CLI module stays a list of commands.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frozenlm.codec import to_json
from frozenlm.errors import ConfigError


def add_train_command(sub: Any, add_backbone: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `frozenlm train` to the CLI's subcommands."""
    tr = sub.add_parser(
        "train",
        help="train a plug-in (soft prompt or ID-PT prompt generator) on one or more tasks",
        description="Train one plug-in on the tasks named, in mixed-task batches. soft-prompt: "
        "one prompt per task (or one for all with --shared-prompt); id-pt: one generator that "
        "writes each input's prompt from its instruction and text.",
    )
    tr.add_argument("--task", required=True, help="task names or files, comma-separated")
    tr.add_argument("--method", choices=["soft-prompt", "id-pt"], default="soft-prompt")
    tr.add_argument("--out", required=True, help="output folder (best/ and last/ checkpoints)")
    tr.add_argument("--prompt-length", type=int, default=20, help="soft tokens per input")
    tr.add_argument("--init", choices=["class-labels", "vocab", "random"], default="class-labels")
    tr.add_argument(
        "--shared-prompt", action="store_true", help="soft-prompt: one prompt for every task"
    )
    tr.add_argument(
        "--encoder",
        choices=["backbone-embeddings", "minilm"],
        default="minilm",
        help="id-pt: the frozen encoder the generator reads the input with",
    )
    tr.add_argument("--generator-width", type=int, default=256, help="id-pt: attention width")
    tr.add_argument("--generator-layers", type=int, default=1, help="id-pt: decoder layers")
    tr.add_argument(
        "--task-cap",
        type=int,
        default=None,
        help="at most this many train examples per task (keeps a large task from drowning "
        "the others in a multi-task mix)",
    )
    tr.add_argument("--steps", type=int, default=150, help="optimizer steps at most")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    tr.add_argument("--optimizer", choices=["adafactor", "adamw"], default="adafactor")
    tr.add_argument(
        "--lr",
        type=float,
        default=0.3,
        help="learning rate (Lester: 0.3); id-pt: its base prompt's, the network's is 1/300 of it",
    )
    tr.add_argument("--weight-decay", type=float, default=1e-5)
    tr.add_argument("--eval-every", type=int, default=25, help="dev evaluation every N steps")
    tr.add_argument("--eval-limit", type=int, default=200, help="dev examples per evaluation")
    tr.add_argument("--patience", type=int, default=4, help="evaluations without improvement")
    tr.add_argument("--no-chat-template", action="store_true")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last")
    add_backbone(tr)
    tr.set_defaults(func=run_train_command)


def run_train_command(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.plugins.prompt_generator import PromptGeneratorConfig
    from frozenlm.plugins.soft_prompt import SoftPromptConfig
    from frozenlm.training.loop import TrainConfig, train_plugin

    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        eval_limit=args.eval_limit,
        patience=args.patience,
        seed=args.seed,
        chat_template=not args.no_chat_template,
        task_cap=args.task_cap,
    )
    if args.method == "id-pt":
        if args.shared_prompt:
            raise ConfigError("--shared-prompt applies to soft prompts, not to id-pt")
        plugin_config = to_json(
            PromptGeneratorConfig(
                length=args.prompt_length,
                encoder=args.encoder,
                width=args.generator_width,
                layers=args.generator_layers,
            )
        )
    else:
        plugin_config = to_json(
            SoftPromptConfig(length=args.prompt_length, init=args.init, shared=args.shared_prompt)
        )
    backbone = resolve_backbone(args.backbone)
    result = train_plugin(
        backbone,
        args.task.split(","),
        args.method,
        plugin_config,
        config,
        args.out,
        resume=args.resume,
    )
    print(
        f"best dev {result.best_metric:.4f} at step {result.best_step} "
        f"({result.steps_done} steps{', stopped early' if result.stopped_early else ''}, "
        f"{result.seconds:.0f} s); best checkpoint in {args.out}/best"
    )
    _record_train(args, backbone, result)
    return 0


def _record_train(args: argparse.Namespace, backbone: Any, result: Any) -> None:
    """The train record, from the best checkpoint's plugin.json (split hashes, dev metrics per
    task, tensor shapes)."""
    from frozenlm.cli.main import _record
    from frozenlm.plugins.checkpoint import PLUGIN_JSON, read_json_object

    best = read_json_object(Path(args.out) / "best" / PLUGIN_JSON, "the best checkpoint")
    per_task = best.get("metrics", {}).get("dev_per_task", {})
    metrics = {
        name: {f"dev_{spec.get('metric', 'metric')}": per_task.get(name)}
        for name, spec in best["tasks"].items()
    }
    trainable = sum(math.prod(t["shape"]) for t in best["tensors"].values())
    costs = {
        "seconds": result.seconds,
        "steps": result.steps_done,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "trainable_parameters": trainable,
    }
    _record(args, "train", backbone, best["split_hashes"], metrics, costs, [args.out])
