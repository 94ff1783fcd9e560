"""The one training loop for every plug-in: only plug-in parameters get gradients.

Defaults are the recipe of Lester et al. 2021 for prompt tuning: Adafactor with a constant
learning rate of 0.3, no parameter scaling, no relative step, weight decay 1e-5, early stopping
on the dev metric. Rows of a batch may belong to different tasks (mixed-task batches); the data
order is a pure function of (seed, step), so a run resumed from its last checkpoint finishes
exactly like an uninterrupted one. Each plug-in kind may bring its own recipe
(`frozenlm.plugins.registry.recipe`: soft and deep prompts train with AdamW at 1e-2, by
measurement).

The loop guards against collapse: gradients are clipped, the learning rate may warm up, and a
run that diverges (its dev metric falls below calibrated zero-shot prompting or to the majority
class after having been above both, or its training loss rises over several evaluations) goes
back to its best healthy state (or its initial one) with a lower learning rate, which is logged
and recorded in the result.

Layout of `out`: the best checkpoint (by dev metric) in `out/best/`, the latest state for
`--resume` (plug-in, optimizer, RNG, step) in `out/last/`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import nn
from transformers.optimization import Adafactor

from frozenlm.atomic import check_output_folder, leftovers, remove_folder
from frozenlm.backbone import Backbone
from frozenlm.devices import seeded_rng
from frozenlm.engine.loss import batch_loss
from frozenlm.errors import ConfigError
from frozenlm.plugins.checkpoint import (
    load_training_state,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from frozenlm.plugins.protocol import Plugin, conditioning_by_row
from frozenlm.progress import progress
from frozenlm.tasks import Task
from frozenlm.training.config import TrainConfig
from frozenlm.training.dev import dev_majority, dev_metric, zero_shot_floor
from frozenlm.training.distributed import (
    Ranks,
    all_reduce_gradients,
    all_reduce_sum,
    broadcast_json,
    broadcast_parameters,
    check_same,
    check_same_backbone,
    current,
)
from frozenlm.training.rows import DataOrder, TrainRow, training_rows

OnEvent: TypeAlias = Callable[[dict[str, Any]], None]
"""Told of training progress: one dict per step and per dev evaluation."""

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run did."""

    best_metric: float
    best_step: int
    steps_done: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    """Each divergence caught: step, reason, the learning rate factor after it."""
    floor: float | None = None
    """The dev metric of calibrated zero-shot prompting the run was watched against."""
    majority: float | None = None
    """The dev accuracy of predicting the train split's majority class (classification)."""


def make_optimizer(
    params: list[nn.Parameter] | list[dict[str, Any]], config: TrainConfig
) -> torch.optim.Optimizer:
    """`config.optimizer` over the parameters (or parameter groups with their own lr)."""
    if config.optimizer == "adafactor":
        return Adafactor(
            params,
            lr=config.lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(f"unknown optimizer '{config.optimizer}'; expected adafactor or adamw")


@dataclass
class TrainState:
    """Where a run is; everything but `history` is the "loop" dict of `last/`'s
    training_state.json, and all of it is restored on resume."""

    step: int = 0
    """Optimizer steps done."""
    best: float | None = None
    """Best dev metric so far; None until the first dev evaluation (JSON has no -inf)."""
    best_step: int = 0
    """The step of `best`."""
    bad: int = 0
    """Dev evaluations since the last improvement."""
    loss_sum: float = 0.0
    """Training loss summed since the last dev evaluation..."""
    loss_steps: int = 0
    """...over this many steps."""
    lr_factor: float = 1.0
    """What recoveries from divergence have multiplied the learning rate by."""
    rising: int = 0
    """Dev evaluations in a row at which the mean training loss rose."""
    floor: float | None = None
    """Calibrated zero-shot dev metric (the divergence floor), measured once at the start."""
    safe: float | None = None
    """Best dev metric of an evaluation that did not diverge (None: none yet)..."""
    safe_step: int = 0
    """...and its step: what a recovery goes back to (0: the plug-in's initial state)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One entry per dev evaluation: step, mean training loss, dev metric, per-task metric."""
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    """One entry per divergence caught: step, reason, learning rate factor after it."""

    def loop(self) -> dict[str, Any]:
        """The counters as saved under "loop" (everything but the history)."""
        return {k: v for k, v in asdict(self).items() if k != "history"}

    @classmethod
    def from_saved(cls, loop: dict[str, Any], history: list[dict[str, Any]]) -> TrainState:
        """A state from its saved "loop" dict (a run saved before a field existed gets its
        default)."""
        known = {k: v for k, v in loop.items() if k in cls.__dataclass_fields__}
        return cls(**known, history=history)


@dataclass
class Run:
    """What a run holds fixed while `TrainState` moves: the recipe's ingredients, from `setup`."""

    backbone: Backbone
    plugin: Plugin
    tasks: Sequence[Task]
    config: TrainConfig
    out: Path
    meta: dict[str, Any]
    """Written into every checkpoint (with the training config and metrics)."""
    optimizer: torch.optim.Optimizer
    rows: list[TrainRow]
    order: DataOrder
    base_lrs: list[float] = field(default_factory=list)
    """Each optimizer group's learning rate before warm-up and recoveries."""
    best_params: dict[str, torch.Tensor] = field(default_factory=dict)
    """What a recovery goes back to: the plug-in's parameters at its best dev evaluation that
    did not diverge (`TrainState.safe_step`), or its initial parameters before there is one."""
    majority: float | None = None
    """Dev accuracy of the train majority class (`dev_majority`; None: not classification)."""
    ranks: Ranks = field(default_factory=Ranks)
    """This process's rank among the job's (`training.distributed`; one process: rank 0 of 1)."""


def setup(
    backbone: Backbone,
    plugin: Plugin,
    tasks: Sequence[Task],
    config: TrainConfig,
    out: Path,
    *,
    meta: dict[str, Any],
    resume: bool = False,
) -> tuple[Run, TrainState]:
    """The optimizer (a plug-in may train its parts at different rates: `param_groups(lr)`),
    the rows, their order and the state to start from: step 0, or `out/last/` on resume (which
    also restores the plug-in, the optimizer and the RNG)."""
    rows = training_rows(backbone, tasks, config)
    optimizer = make_optimizer(plugin.param_groups(config.lr), config)
    run = Run(
        backbone=backbone,
        plugin=plugin,
        tasks=tasks,
        config=config,
        out=out,
        meta={**meta, "train_config": asdict(config)},
        optimizer=optimizer,
        rows=rows,
        order=DataOrder(len(rows), config.seed),
        base_lrs=[float(group["lr"]) for group in optimizer.param_groups],
        majority=dev_majority(tasks, config),
        ranks=current(),
    )
    check_same_backbone(backbone.fingerprint, run.ranks)
    state = TrainState()
    if resume:
        state = resume_state(run) or state
        check_same(
            str(state.step),
            run.ranks,
            "the ranks resumed from different steps ({values}): every rank reads OUT/last/ on "
            "--resume, so OUT must be a folder they all see",
        )
    if not run.best_params:  # a fresh run: a recovery before any healthy evaluation restarts
        run.best_params = {n: p.detach().clone() for n, p in plugin.named_parameters()}
    if config.recover and state.floor is None:
        if run.ranks.main:
            plugin.eval()
            state.floor = zero_shot_floor(backbone, tasks, config)
            plugin.train()
        if run.ranks.world > 1:  # rank 0 measured it; the others take its value
            state.floor = broadcast_json(state.floor, run.ranks, backbone.device)
    return run, state


def resume_state(run: Run) -> TrainState | None:
    """Restore plug-in, optimizer and RNG from `out/last/` and return its state (None, with a
    warning, when nothing was saved)."""
    saved = load_training_state(run.out / "last")
    if saved is None:
        log.warning("no saved training state in %s; starting from step 0", run.out / "last")
        return None
    tensors, saved_meta = saved
    with torch.no_grad():
        for name, param in run.plugin.named_parameters():
            param.copy_(tensors[f"param.{name}"])
    run.optimizer.load_state_dict(
        optimizer_state_from_tensors(
            {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")},
            saved_meta["optimizer"],
        )
    )
    restore_rng_state(
        {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}, saved_meta["rng"]
    )
    run.best_params = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return TrainState.from_saved(saved_meta["loop"], saved_meta["history"])


def micro_batch(run: Run, step: int, micro: int) -> list[TrainRow]:
    """The rows of micro-batch `micro` of optimizer step `step`: a pure function of both."""
    size, accum, ranks = run.config.batch_size, run.config.grad_accum, run.ranks
    # with N ranks a step has N * grad_accum micro-batches; rank r takes its own grad_accum
    first = (step * accum * ranks.world + ranks.rank * accum + micro) * size
    return [run.rows[run.order[p]] for p in range(first, first + size)]


def optimizer_step(run: Run, step: int, lr_factor: float = 1.0) -> float:
    """One optimizer step over `grad_accum` micro-batches, at the learning rate warm-up and
    recoveries give step `step`, gradients clipped; returns its training loss."""
    scale = run.config.lr_scale(step) * lr_factor
    for group, base in zip(run.optimizer.param_groups, run.base_lrs, strict=True):
        group["lr"] = base * scale
    total = 0.0
    for micro in range(run.config.grad_accum):
        batch = micro_batch(run, step, micro)
        made = conditioning_by_row([(run.plugin, r.task, r.example) for r in batch])
        rows = [c.row(r.prefix, r.input_start) for r, c in zip(batch, made, strict=True)]
        targets = [r.target for r in batch]
        share = run.config.grad_accum * run.ranks.world
        loss = batch_loss(run.backbone, rows, targets) / share
        loss.backward()
        total += float(loss.detach())
    trainable = [p for p in run.plugin.parameters() if p.requires_grad]
    if run.ranks.world > 1:  # the plug-in's gradients only: the backbone has none
        all_reduce_gradients(trainable)
        total = all_reduce_sum(total, run.backbone.device)
    if run.config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(trainable, run.config.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def evaluate_dev(run: Run, state: TrainState) -> tuple[float, dict[str, float]]:
    """Dev metric of the plug-in now; logs it with the mean training loss since the last
    evaluation in `state.history`."""
    run.plugin.eval()
    metric, per_task = dev_metric(run.backbone, run.plugin, run.tasks, run.config)
    run.plugin.train()
    mean_loss = state.loss_sum / state.loss_steps
    state.loss_sum, state.loss_steps = 0.0, 0
    state.history.append(
        {"step": state.step, "loss": mean_loss, "dev": metric, "per_task": per_task}
    )
    return metric, per_task


def save_best(run: Run, state: TrainState, metric: float, per_task: dict[str, float]) -> None:
    """The plug-in and its dev metrics in `out/best/`."""
    metrics = {"dev": metric, "dev_per_task": per_task, "step": state.step}
    save_checkpoint(run.out / "best", run.plugin.tensors(), {**run.meta, "metrics": metrics})


def healthy(run: Run, state: TrainState, metric: float) -> bool:
    """A dev metric at or above calibrated zero-shot prompting and above the majority class:
    training has made the frozen model better than a prompt and than the label prior."""
    above_floor = state.floor is None or metric >= state.floor
    return above_floor and (run.majority is None or metric > run.majority)


def keep_safe(run: Run, state: TrainState, metric: float) -> None:
    """Remember the parameters of a healthy dev evaluation when it is the best such one: what a
    later recovery goes back to (the initial state until there is one)."""
    if healthy(run, state, metric) and (state.safe is None or metric > state.safe):
        state.safe, state.safe_step = metric, state.step
        run.best_params = {n: p.detach().clone() for n, p in run.plugin.named_parameters()}


def divergence(run: Run, state: TrainState, metric: float) -> str | None:
    """Why the run has diverged at this dev evaluation, or None: after a healthy evaluation
    (`healthy`), its dev metric fell below calibrated zero-shot prompting (training made the
    frozen model worse than a prompt) or to the majority class (it kept only the label prior);
    or, at any time, its training loss rose `rising_evals` evaluations in a row. A run that has
    not yet been healthy is still learning, not diverging: restarting it at a lower rate would
    only slow it down (measured: trec at 64 rows, restarted at steps 20, 40 and 60, ended below
    the majority class)."""
    config = run.config
    if len(state.history) >= 2 and state.history[-1]["loss"] > state.history[-2]["loss"]:
        state.rising += 1
    else:
        state.rising = 0
    if state.safe is not None and state.floor is not None and metric < state.floor:
        return (
            f"the dev metric fell to {metric:.3f}, below calibrated zero-shot prompting "
            f"({state.floor:.3f}), from {state.safe:.3f}"
        )
    if state.safe is not None and run.majority is not None and metric <= run.majority:
        return (
            f"the dev accuracy fell to {metric:.3f}, not above the majority class "
            f"({run.majority:.3f}), from {state.safe:.3f}"
        )
    if state.rising >= config.rising_evals:
        return f"the training loss rose at {state.rising} dev evaluations in a row"
    return None


def recover(run: Run, state: TrainState, reason: str) -> bool:
    """Back to the best healthy state (`keep_safe`) with a lower learning rate and fresh
    optimizer statistics; False when the run has used its recoveries (it should stop)."""
    config = run.config
    if len(state.recoveries) >= config.max_recoveries:
        log.warning("training diverged at step %d (%s); no recovery left", state.step, reason)
        state.recoveries.append({"step": state.step, "reason": reason, "lr_factor": None})
        return False
    state.lr_factor *= config.recover_factor
    with torch.no_grad():
        for name, param in run.plugin.named_parameters():
            param.copy_(run.best_params[name])
    run.optimizer.state.clear()
    state.rising, state.bad = 0, 0
    state.recoveries.append(
        {
            "step": state.step,
            "reason": reason,
            "lr_factor": state.lr_factor,
            "back_to_step": state.safe_step,
        }
    )
    target = f"step {state.safe_step}" if state.safe_step else "the initial state"
    log.warning(
        "training diverged at step %d (%s): back to the best healthy state (%s), learning rate x%g",
        state.step,
        reason,
        target,
        state.lr_factor,
    )
    return True


def save_last(run: Run, state: TrainState) -> None:
    """Everything a resume needs in `out/last/`: plug-in, optimizer, RNG, state, and what the
    run was (so a resume with another command is refused)."""
    opt_tensors, opt_meta = optimizer_state_to_tensors(run.optimizer.state_dict())
    rng_tensors, rng_meta = rng_state()
    training = {f"param.{n}": p.detach().clone() for n, p in run.plugin.named_parameters()}
    training |= {f"best.{n}": p for n, p in run.best_params.items()}
    training |= {f"opt.{k}": v for k, v in opt_tensors.items()}
    training |= {f"rng.{k}": v for k, v in rng_tensors.items()}
    meta = run.meta
    save_checkpoint(
        run.out / "last",
        run.plugin.tensors(),
        {**meta, "metrics": {"history": state.history}},
        training_tensors=training,
        training_meta={
            "optimizer": opt_meta,
            "rng": rng_meta,
            "loop": state.loop(),
            "history": state.history,
            "run": {
                "plugin_config": meta.get("plugin_config"),
                "tasks": sorted(meta.get("tasks", {})),
                "train_config": asdict(run.config),
                "fingerprint": meta.get("backbone", {}).get("fingerprint"),
            },
        },
    )


def _dev_point(
    run: Run, state: TrainState, loss: float, bar: Any, on_event: OnEvent | None
) -> bool:
    """Rank 0's dev evaluation after a step: best checkpoint, divergence and recovery, early
    stopping, `last/`. Returns whether training stops."""
    config = run.config
    metric, per_task = evaluate_dev(run, state)
    reason = divergence(run, state, metric) if config.recover else None
    if state.best is None or metric > state.best:
        state.best, state.best_step, state.bad = metric, state.step, 0
        save_best(run, state, metric, per_task)
    else:
        state.bad += 1
    if reason is None:
        keep_safe(run, state, metric)
    stopped = config.patience > 0 and state.bad >= config.patience
    if reason is not None:
        stopped = not recover(run, state, reason)
    if config.save_last:
        save_last(run, state)
    bar.set_postfix(loss=f"{loss:.3f}", dev=f"{metric:.3f}", best=f"{state.best:.3f}")
    if on_event is not None:
        on_event({"step": state.step, "loss": loss, "dev": metric, "best": state.best})
    return stopped


def _share_dev_point(run: Run, state: TrainState, stopped: bool) -> bool:
    """Rank 0's loop state and plug-in weights on every rank after a dev evaluation (a recovery
    from divergence changes both; the others then drop their optimizer statistics as rank 0
    did)."""
    device = run.backbone.device
    before = len(state.recoveries)
    shared = broadcast_json(
        {"loop": state.loop(), "history": state.history, "stopped": stopped}, run.ranks, device
    )
    if not run.ranks.main:
        fresh = TrainState.from_saved(shared["loop"], shared["history"])
        for name in TrainState.__dataclass_fields__:
            setattr(state, name, getattr(fresh, name))
        if len(state.recoveries) > before:
            run.optimizer.state.clear()
    # what training (or a recovery) changed; frozen parts (an encoder) are the same everywhere
    broadcast_parameters([p for p in run.plugin.parameters() if p.requires_grad])
    return bool(shared["stopped"])


def train_steps(run: Run, state: TrainState, on_event: OnEvent | None = None) -> bool:
    """The loop: optimizer steps until `config.steps`, with a dev evaluation (best checkpoint,
    early stopping, `last/`) every `eval_every` steps and at the end. Returns whether it
    stopped early. `on_event`, when given, hears of every step ({"step", "loss"}) and every dev
    evaluation ({"step", "loss", "dev", "best"}) as it happens (a server's job events)."""
    config = run.config
    stopped = config.patience > 0 and state.bad >= config.patience  # resumed after it stopped
    bar = progress(total=config.steps, initial=state.step, desc="train", unit="step")
    while state.step < config.steps and not stopped:
        loss = optimizer_step(run, state.step, state.lr_factor)
        state.step += 1
        state.loss_sum += loss
        state.loss_steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", best=state.best)
        if on_event is not None:
            on_event({"step": state.step, "total_steps": config.steps, "loss": loss})
        if state.step % config.eval_every == 0 or state.step == config.steps:
            if run.ranks.main:
                stopped = _dev_point(run, state, loss, bar, on_event)
            if run.ranks.world > 1:
                stopped = _share_dev_point(run, state, stopped)
    bar.close()
    return stopped


def train(
    backbone: Backbone,
    plugin: Plugin,
    tasks: Sequence[Task],
    config: TrainConfig,
    out: Path,
    *,
    meta: dict[str, Any],
    resume: bool = False,
    on_event: OnEvent | None = None,
) -> TrainResult:
    """Train `plugin` on `tasks`: `setup`, then `train_steps` (which tells `on_event`).

    `meta` (plug-in method and config, task specs, backbone identity) goes into every checkpoint
    with the training config and metrics. The torch RNG is seeded with `config.seed` inside and
    the caller's RNG state is left as it was (`seeded_rng`).
    """
    with seeded_rng(config.seed, backbone.device):
        start = time.perf_counter()
        run, state = setup(backbone, plugin, tasks, config, out, meta=meta, resume=resume)
        stopped = train_steps(run, state, on_event)
    result = TrainResult(
        best_metric=state.best if state.best is not None else float("nan"),
        best_step=state.best_step,
        steps_done=state.step,
        stopped_early=stopped,
        seconds=time.perf_counter() - start,
        history=state.history,
        recoveries=state.recoveries,
        floor=state.floor,
        majority=run.majority,
    )
    if result.majority is not None and result.best_metric <= result.majority:
        log.warning(
            "the trained plug-in's best dev accuracy (%.3f) is not above the majority class "
            "(%.3f): it has learnt no more than the label prior",
            result.best_metric,
            result.majority,
        )
    return result


def train_plugin(
    backbone: Backbone,
    task_refs: Sequence[str],
    method: str,
    plugin_config: dict[str, Any],
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: OnEvent | None = None,
) -> TrainResult:
    """`frozenlm train`: a new plug-in of `method` for the tasks named (built-in names or
    task files), trained in one loop over mixed-task batches, saved under `out`.

    An `out` that holds a run (best/, last/, or what an interrupted save left of them) is
    continued with `resume`, replaced with `overwrite` (the old run is deleted, in one atomic
    rename of `out`, just before training starts) and refused otherwise. `resume` with more
    `config.steps` than the saved run, and every other option the same, trains it further:
    the result is that of an uninterrupted run of that many steps (the data order is a pure
    function of (seed, step)), except that a saved run whose last step is not a multiple of
    `eval_every` keeps the dev evaluation it made there."""
    from frozenlm.plugins.registry import plugin_method
    from frozenlm.tasks import load_task

    out = check_output_folder(out, "out")
    plugin_method(method)  # an unknown method is refused before any work
    check_run_folder(out, resume=resume, overwrite=overwrite)
    tasks = [load_task(ref, seed=config.seed) for ref in task_refs]
    return train_new_plugin(
        backbone,
        tasks,
        task_refs,
        method,
        plugin_config,
        config,
        out,
        resume=resume,
        overwrite=overwrite,
        on_event=on_event,
    )


def train_new_plugin(
    backbone: Backbone,
    tasks: Sequence[Task],
    sources: Sequence[str],
    method: str,
    plugin_config: dict[str, Any],
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: OnEvent | None = None,
) -> TrainResult:
    """`train_plugin` for tasks already loaded (`sources` says where each came from)."""
    from frozenlm.plugins.registry import new_plugin, plugin_meta, plugin_method

    out = check_output_folder(out, "out")
    plugin_method(method)
    found = check_run_folder(out, resume=resume, overwrite=overwrite)
    if len({t.name for t in tasks}) != len(tasks):
        raise ConfigError("each task may be named only once in --task")
    meta = plugin_meta(method, plugin_config, backbone, tasks, sources)
    if resume:
        saved = load_training_state(out / "last")
        if saved is not None:
            _check_same_run(out, saved[1].get("run", {}), meta, config)
    plugin = new_plugin(method, plugin_config, backbone, [t.spec for t in tasks], config.seed)
    plugin.train()
    if found and overwrite and current().main:  # only rank 0 writes the output folder
        log.warning("--overwrite: deleting the run in '%s'", out)
        remove_folder(out)
    return train(backbone, plugin, tasks, config, out, meta=meta, resume=resume, on_event=on_event)


def check_run_folder(out: Path, *, resume: bool, overwrite: bool) -> list[Path]:
    """What of a training run `out` holds (see `run_files`), after refusing what `resume` and
    `overwrite` cannot do with it: both at once, a run with neither, or an `overwrite` of a
    folder that holds other files too."""
    if resume and overwrite:
        raise ConfigError(
            "--resume continues the run in --out and --overwrite replaces it; choose one"
        )
    found = run_files(out)
    if found and not (resume or overwrite):
        raise ConfigError(
            f"'{out}' already holds a training run ({', '.join(p.name for p in found)}); pass "
            "--resume to continue it, --overwrite to replace it, or choose another --out"
        )
    if found and overwrite:
        others = sorted(p.name for p in out.iterdir() if p not in found)
        if others:
            raise ConfigError(
                f"--overwrite deletes a run folder, but '{out}' also holds {', '.join(others)}; "
                "move them or choose another --out"
            )
    return found


def run_files(out: Path) -> list[Path]:
    """What of a training run `out` holds: best/, last/ and the hidden siblings an interrupted
    save of either left (see `frozenlm.atomic`)."""
    if not out.is_dir():
        return []
    found = [out / name for name in ("best", "last") if (out / name).exists()]
    return found + [p for name in ("best", "last") for p in leftovers(out / name)]


_RUN_FIELDS = {"tasks": "tasks", "fingerprint": "backbone fingerprint"}
"""How a saved run's non-dict parts are named; its configs are compared field by field."""


def _check_same_run(
    out: Path, saved: dict[str, Any], meta: dict[str, Any], config: TrainConfig
) -> None:
    """Refuse a resume with other options than the saved run's, naming the fields that differ;
    a larger `steps` (train a run further) is allowed."""
    now = {
        "plugin_config": meta["plugin_config"],
        "tasks": sorted(meta["tasks"]),
        "train_config": asdict(config),
        "fingerprint": meta["backbone"]["fingerprint"],
    }
    differ: list[str] = []
    for key, value in now.items():
        if key not in saved or saved[key] == value:
            continue
        before = saved[key]
        if not (isinstance(before, dict) and isinstance(value, dict)):
            differ.append(f"{_RUN_FIELDS.get(key, key)} {_shown(before)}, not {_shown(value)}")
            continue
        for name in sorted(before.keys() | value.keys()):
            old, new = before.get(name), value.get(name)
            steps = key == "train_config" and name == "steps"
            more_steps = steps and isinstance(old, int) and isinstance(new, int) and new > old
            if old != new and not more_steps:
                differ.append(f"{name}={_shown(old)}, not {_shown(new)}")
    if differ:
        raise ConfigError(
            f"--resume: the run saved in '{out}' used {'; '.join(differ)}; resume with the same "
            "options (only a larger --steps is allowed: it trains the run further)"
        )


def _shown(value: Any) -> str:
    return json.dumps(value)
