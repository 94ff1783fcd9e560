"""`frozenlm train`: one plug-in on the tasks named (`frozenlm.training.loop.train_plugin`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frozenlm.cli.common import add_backbone, check_output_folder, load_backbone, record
from frozenlm.errors import ConfigError

if TYPE_CHECKING:
    from frozenlm.backbone import Backbone
    from frozenlm.training.config import TrainConfig
    from frozenlm.training.loop import TrainResult

DESCRIPTION = (
    "Train one plug-in on the tasks named, in mixed-task batches. soft-prompt: one prompt per "
    "task (or one for all with --shared-prompt); prefix: a deep prompt, keys and values at every "
    "layer, per task; id-pt: one generator that writes each input's prompt from its instruction "
    "and text; recursion: the frozen model applied twice, pass 1's states written into pass 2's "
    "input by a trained connector (--pretrain-lm bbc pre-trains one on language modelling, "
    "--init-from starts task training from it). Each kind trains with its own measured recipe "
    "unless --optimizer, --lr, --weight-decay or --warmup say otherwise."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--task", help="task names or files, comma-separated")
    parser.add_argument(
        "--pretrain-lm",
        choices=["bbc"],
        help="recursion: instead of a task, pre-train the connector on language modelling over "
        "this packaged text (pass 1 reads a chunk, pass 2 must continue it)",
    )
    parser.add_argument("--out", required=True, help="output folder (best/ and last/ checkpoints)")
    add_training_options(parser)
    add_backbone(parser)


def add_training_options(parser: argparse.ArgumentParser, *, chat_template: bool = True) -> None:
    """The plug-in and training-loop options (`frozenlm train`, `frozenlm qa train-reader`);
    `chat_template` is the default of rendering training rows in the chat template."""
    from frozenlm.plugins.connector import ConnectorConfig
    from frozenlm.plugins.prefix import PrefixConfig
    from frozenlm.plugins.prompt_generator import EncoderKind, PromptGeneratorConfig
    from frozenlm.plugins.protocol import SoftPosition
    from frozenlm.plugins.registry import PLUGINS
    from frozenlm.plugins.soft_prompt import PromptInit, SoftPromptConfig
    from frozenlm.training.config import TrainConfig

    parser.add_argument("--method", choices=list(PLUGINS), default="soft-prompt")
    parser.add_argument(
        "--prompt-length",
        type=int,
        help=f"soft tokens per input (default {SoftPromptConfig.length}); prefix: positions of "
        f"the deep prompt (default {PrefixConfig.length})",
    )
    parser.add_argument(
        "--position",
        choices=[p.value for p in SoftPosition],
        help="soft-prompt and id-pt: where the prompt sits (start: before everything; "
        "after-first: after the template's first token; input: right before the input; "
        f"default: {SoftPromptConfig.position.value} for soft-prompt, "
        f"{PromptGeneratorConfig.position.value} for id-pt, by measurement)",
    )
    parser.add_argument(
        "--residual",
        type=int,
        default=SoftPromptConfig.residual,
        help="soft-prompt: residual reparameterization with this bottleneck while training (0: "
        "none)",
    )
    parser.add_argument(
        "--reparameterize",
        type=int,
        default=PrefixConfig.reparameterize,
        help="prefix: write the prefix through an MLP of this bottleneck while training (0: none)",
    )
    parser.add_argument(
        "--init", choices=[i.value for i in PromptInit], default=SoftPromptConfig.init.value
    )
    parser.add_argument(
        "--shared-prompt", action="store_true", help="soft-prompt: one prompt for every task"
    )
    parser.add_argument(
        "--encoder",
        choices=[e.value for e in EncoderKind],
        default=PromptGeneratorConfig.encoder.value,
        help="id-pt: the frozen encoder the generator reads the input with",
    )
    parser.add_argument(
        "--generator-width",
        type=int,
        default=PromptGeneratorConfig.width,
        help="id-pt: attention width",
    )
    parser.add_argument(
        "--generator-layers",
        type=int,
        default=PromptGeneratorConfig.layers,
        help="id-pt: decoder layers",
    )
    parser.add_argument(
        "--connector-tokens",
        type=int,
        default=ConnectorConfig.tokens,
        help="recursion: vectors the connector writes for pass 2",
    )
    parser.add_argument(
        "--connector-width",
        type=int,
        default=ConnectorConfig.width,
        help="recursion: the connector's attention width",
    )
    parser.add_argument(
        "--connector-layers",
        type=int,
        default=ConnectorConfig.layers,
        help="recursion: the connector's transformer layers",
    )
    parser.add_argument(
        "--connector-heads",
        type=int,
        default=ConnectorConfig.heads,
        help="recursion: the connector's attention heads",
    )
    parser.add_argument(
        "--first-layer",
        type=int,
        default=ConnectorConfig.layer,
        help="recursion: the pass-1 layer the connector reads (-1: the final states)",
    )
    parser.add_argument(
        "--connector-join",
        choices=["append", "add"],
        default=ConnectorConfig.join,
        help="recursion: the connector's vectors after the pass-2 prompt, or added onto it "
        "(then --connector-tokens must equal --prompt-length)",
    )
    parser.add_argument(
        "--connector-lr-scale",
        type=float,
        default=ConnectorConfig.network_lr_scale,
        help="recursion: the connector network's learning rate as a fraction of --lr",
    )
    parser.add_argument(
        "--first-prompt",
        help="recursion: a trained soft prompt (folder) pass 1 runs with, frozen; pass 2's "
        "prompt starts from it",
    )
    parser.add_argument(
        "--init-from",
        help="recursion: start the connector's network from this saved connector (e.g. one "
        "trained with --pretrain-lm)",
    )
    parser.add_argument(
        "--task-cap",
        type=int,
        default=TrainConfig.task_cap,
        help="at most this many train examples per task (keeps a large task from drowning "
        "the others in a multi-task mix)",
    )
    parser.add_argument(
        "--steps", type=int, default=TrainConfig.steps, help="optimizer steps at most"
    )
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument(
        "--grad-accum", type=int, default=TrainConfig.grad_accum, help="micro-batches per step"
    )
    parser.add_argument(
        "--optimizer", choices=["adafactor", "adamw"], help="default: the method's recipe"
    )
    parser.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: the method's recipe; soft-prompt and prefix: 1e-2 with "
        "AdamW; id-pt: Lester's 0.3 with Adafactor for its base prompt, the network's is 1/300 "
        "of it)",
    )
    parser.add_argument("--weight-decay", type=float, help="default: the method's recipe")
    parser.add_argument(
        "--warmup", type=int, help="steps of linear learning-rate warm-up (default: the recipe)"
    )
    parser.add_argument(
        "--max-grad-norm",
        type=float,
        default=TrainConfig.max_grad_norm,
        help="clip the gradient norm to this (0: no clipping)",
    )
    parser.add_argument(
        "--balance",
        choices=["none", "sample"],
        default=TrainConfig.balance,
        help="sample: draw every class equally often (repeats rows of smaller classes)",
    )
    parser.add_argument(
        "--no-recover",
        action="store_true",
        help="do not go back to the best state with a lower learning rate when training diverges",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=TrainConfig.eval_every,
        help="dev evaluation every N steps",
    )
    parser.add_argument(
        "--eval-limit",
        type=int,
        default=TrainConfig.eval_limit,
        help="dev examples per evaluation",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=TrainConfig.patience,
        help="evaluations without improvement",
    )
    if chat_template:
        parser.add_argument("--no-chat-template", dest="chat_template", action="store_false")
    else:
        parser.add_argument(
            "--chat-template",
            dest="chat_template",
            action="store_true",
            help="render the training rows in the backbone's chat template",
        )
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the training run OUT holds (best/ and last/) and train a new one",
    )


def training_settings(args: argparse.Namespace) -> tuple[dict[str, Any], TrainConfig]:
    """(plug-in config JSON, training config) from the options `add_training_options` adds."""
    from frozenlm.codec import to_json
    from frozenlm.plugins.connector import ConnectorConfig
    from frozenlm.plugins.prefix import PrefixConfig
    from frozenlm.plugins.prompt_generator import PromptGeneratorConfig
    from frozenlm.plugins.registry import recipe
    from frozenlm.plugins.soft_prompt import SoftPromptConfig
    from frozenlm.recursion.pretrain import CONTEXT_FIELD
    from frozenlm.training.config import TrainConfig

    given = {
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup": args.warmup,
    }
    chosen = recipe(args.method) | {k: v for k, v in given.items() if v is not None}
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        eval_every=args.eval_every,
        eval_limit=args.eval_limit,
        patience=args.patience,
        seed=args.seed,
        chat_template=args.chat_template,
        task_cap=args.task_cap,
        max_grad_norm=args.max_grad_norm or None,
        balance=args.balance,
        recover=not args.no_recover,
        **chosen,
    )
    if args.shared_prompt and args.method != "soft-prompt":
        raise ConfigError(f"--shared-prompt applies to soft prompts, not to {args.method}")
    recursion_only = ("first_prompt", "init_from", "pretrain_lm")
    for name in recursion_only:
        if getattr(args, name, None) and args.method != "recursion":
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"{option} applies to --method recursion, not to {args.method}")
    if args.method == "id-pt":
        plugin_config = to_json(
            PromptGeneratorConfig(
                length=args.prompt_length or PromptGeneratorConfig.length,
                encoder=args.encoder,
                width=args.generator_width,
                layers=args.generator_layers,
                position=args.position or PromptGeneratorConfig.position,
            )
        )
    elif args.method == "recursion":
        plugin_config = to_json(
            ConnectorConfig(
                tokens=args.connector_tokens,
                prompt_length=SoftPromptConfig.length
                if args.prompt_length is None
                else args.prompt_length,
                width=args.connector_width,
                layers=args.connector_layers,
                heads=args.connector_heads,
                layer=args.first_layer,
                position=args.position or ConnectorConfig.position,
                chat_template=args.chat_template,
                first_prompt=args.first_prompt,
                context_field=CONTEXT_FIELD if getattr(args, "pretrain_lm", None) else None,
                init_from=args.init_from,
                join=args.connector_join,
                network_lr_scale=args.connector_lr_scale,
            )
        )
    elif args.method == "prefix":
        plugin_config = to_json(
            PrefixConfig(
                length=args.prompt_length or PrefixConfig.length,
                init=args.init,
                reparameterize=args.reparameterize,
            )
        )
    else:
        plugin_config = to_json(
            SoftPromptConfig(
                length=args.prompt_length or SoftPromptConfig.length,
                init=args.init,
                shared=args.shared_prompt,
                position=args.position or SoftPromptConfig.position,
                residual=args.residual,
            )
        )
    return plugin_config, config


def run(args: argparse.Namespace) -> int:
    from frozenlm.compare.domain import load_compare_task
    from frozenlm.training.loop import train_new_plugin

    check_output_folder(args.out)
    if bool(args.task) == bool(args.pretrain_lm):
        raise ConfigError("name the tasks to train on with --task, or pre-train with --pretrain-lm")
    plugin_config, config = training_settings(args)
    from frozenlm.training.distributed import init_from_env, rank_device

    ranks = init_from_env(args.device)  # under torchrun: join the job (one process otherwise)
    args.device = rank_device(args.device)
    backbone = load_backbone(args)
    if args.pretrain_lm:
        from frozenlm.recursion.pretrain import pretrain_connector

        result = pretrain_connector(
            backbone,
            args.pretrain_lm,
            plugin_config,
            config,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    else:
        refs = args.task.split(",")
        result = train_new_plugin(
            backbone,
            [load_compare_task(ref, seed=config.seed) for ref in refs],
            refs,
            args.method,
            plugin_config,
            config,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    if not ranks.main:
        return 0  # rank 0 reports and records
    print(
        f"best dev {result.best_metric:.4f} at step {result.best_step} "
        f"({result.steps_done} steps{', stopped early' if result.stopped_early else ''}, "
        f"{result.seconds:.0f} s); best checkpoint in {args.out}/best"
    )
    record_train(args, backbone, result)
    return 0


def record_train(args: argparse.Namespace, backbone: Backbone, result: TrainResult) -> None:
    """The train record, from the best checkpoint's plugin.json (split hashes, dev metrics per
    task, tensor shapes)."""
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
    record(args, "train", backbone, best["split_hashes"], metrics, costs, [args.out])
