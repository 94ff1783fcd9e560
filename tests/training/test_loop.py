import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import write_toy_task
from frozenlm.backbone import Backbone, TinyConfig
from frozenlm.codec import to_json
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.plugins.checkpoint import load_checkpoint
from frozenlm.plugins.prefix import PrefixConfig
from frozenlm.plugins.prompt_generator import PromptGenerator, PromptGeneratorConfig
from frozenlm.plugins.registry import load_plugin
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import (
    divergence,
    healthy,
    keep_safe,
    recover,
    setup,
    train,
    train_plugin,
)
from frozenlm.training.rows import DataOrder, training_rows


def test_data_order_is_a_seeded_permutation_per_epoch() -> None:
    order = DataOrder(10, seed=1)
    first, second = [order[p] for p in range(10)], [order[p] for p in range(10, 20)]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert [DataOrder(10, seed=1)[p] for p in range(10, 20)] == second


def test_one_step_trains_the_prompt_only(tiny: Backbone, tmp_path: Path) -> None:
    task = load_task(str(write_toy_task(tmp_path, 48)))
    plugin = SoftPromptSet.from_config(SoftPromptConfig(length=4), tiny, [task.spec], seed=0)
    before = plugin.prompts["toy"].detach().clone()
    # no divergence guard: the random tiny model's dev metric may sit below zero-shot, and a
    # recovery would put the initial prompt back
    config = TrainConfig(steps=1, batch_size=4, eval_every=1, eval_limit=4, recover=False)
    train(tiny, plugin, [task], config, tmp_path / "run", meta={"kind": "soft-prompt"})
    assert not torch.equal(before, plugin.prompts["toy"])
    assert all(p.grad is None for p in tiny.model.parameters())
    assert all(not p.requires_grad for p in tiny.model.parameters())


def test_training_leaves_the_callers_rng_untouched(tiny: Backbone, tmp_path: Path) -> None:
    task = load_task(str(write_toy_task(tmp_path, 16)))
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_limit=4, seed=5)

    def run(out: str) -> torch.Tensor:
        plugin = SoftPromptSet.from_config(SoftPromptConfig(length=2), tiny, [task.spec], seed=0)
        train(tiny, plugin, [task], config, tmp_path / out, meta={"kind": "soft-prompt"})
        return plugin.prompts["toy"].detach()

    torch.manual_seed(123)
    random.seed(123)
    torch_before, python_before = torch.random.get_rng_state(), random.getstate()
    first = run("a")
    assert torch.equal(torch.random.get_rng_state(), torch_before)
    assert random.getstate() == python_before
    torch.manual_seed(999)  # another caller state: the same seed still gives the same prompt
    assert torch.equal(run("b"), first)


def test_training_lowers_the_loss_and_keeps_the_best_checkpoint(
    tiny: Backbone, tmp_path: Path
) -> None:
    task_file = write_toy_task(tmp_path, 48)
    # recover=False: on the random tiny model a recovery may put the prompt back (that has its
    # own tests); here the loss must fall over the whole run
    config = TrainConfig(
        steps=30, batch_size=8, eval_every=10, eval_limit=8, patience=0, recover=False
    )
    result = train_plugin(
        tiny,
        [str(task_file)],
        "soft-prompt",
        to_json(SoftPromptConfig(length=4)),
        config,
        tmp_path / "run",
    )
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    best = load_checkpoint(tmp_path / "run" / "best", backbone=tiny)
    assert best.meta["metrics"]["dev"] == result.best_metric
    assert best.meta["metrics"]["step"] == result.best_step
    plugin, _ = load_plugin(tmp_path / "run", tiny)
    assert isinstance(plugin, SoftPromptSet) and plugin.task_names == ["toy"]


@pytest.mark.parametrize("method", ["soft-prompt", "prefix"])
def test_a_plugin_trained_in_float32_loads_and_scores_in_bfloat16(
    tiny: Backbone, tmp_path: Path, method: str
) -> None:
    task_file = write_toy_task(tmp_path, 24)
    config = TrainConfig(steps=3, batch_size=4, eval_every=3, eval_limit=4)
    prompt = to_json(
        SoftPromptConfig(length=4) if method == "soft-prompt" else PrefixConfig(length=4)
    )
    train_plugin(tiny, [str(task_file)], method, prompt, config, tmp_path / "run")
    half = Backbone.load("tiny", device="cpu", dtype="bfloat16")
    plugin, _ = load_plugin(tmp_path / "run", half)
    weights = plugin.prompts if isinstance(plugin, SoftPromptSet) else plugin.prefixes  # type: ignore[attr-defined]
    assert weights["toy"].dtype == torch.float32  # plug-in weights stay fp32
    task = load_task(str(task_file))
    eval_config = EvalConfig(split="test")
    low = evaluate(half, task, eval_config, plugin=plugin)
    full = evaluate(tiny, task, eval_config, plugin=load_plugin(tmp_path / "run", tiny)[0])
    assert low.n == full.n == 4 and low.fingerprint == full.fingerprint
    for a, b in zip(low.predictions, full.predictions, strict=True):
        torch.testing.assert_close(  # the tolerance of test_bfloat16_scores_agree_with_float32
            torch.tensor(a["scores"]), torch.tensor(b["scores"]), atol=0.05, rtol=0
        )
    other = Backbone.tiny(TinyConfig(seed=1), device="cpu", dtype="bfloat16")
    with pytest.raises(CheckpointError, match="was trained on backbone"):
        load_plugin(tmp_path / "run", other)


def test_an_existing_run_is_not_overwritten(tiny: Backbone, tmp_path: Path) -> None:
    task_file = write_toy_task(tmp_path, 48)
    config = TrainConfig(steps=1, batch_size=2, eval_every=1, eval_limit=2)
    args = (
        tiny,
        [str(task_file)],
        "soft-prompt",
        to_json(SoftPromptConfig(length=2)),
        config,
        tmp_path / "run",
    )
    train_plugin(*args)
    with pytest.raises(ConfigError, match="--resume"):
        train_plugin(*args)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("killed", ["best swap", "last swap", "first best save"])
def test_an_interrupted_run_is_not_overwritten_either(
    killed: str, tiny: Backbone, tmp_path: Path
) -> None:
    """What a kill mid-swap leaves (the old best/ or last/ renamed aside, the new one in a temp
    folder, or only a temp folder) is a run: a new run is refused, nothing is touched."""
    task_file = write_toy_task(tmp_path, 24)
    config = TrainConfig(steps=2, batch_size=2, eval_every=1, eval_limit=2)
    args = (tiny, [str(task_file)], "soft-prompt", to_json(SoftPromptConfig(length=2)), config)
    out = tmp_path / "run"
    train_plugin(*args, out)
    if killed == "first best save":
        shutil.rmtree(out / "best")
        shutil.rmtree(out / "last")
        (out / ".best.tmp-0123abcd").mkdir()
    else:
        name = killed.split()[0]
        (out / name).rename(out / f".{name}.old-0123abcd")
        shutil.copytree(out / f".{name}.old-0123abcd", out / f".{name}.tmp-89abcdef")
    before = _files(out)
    with pytest.raises(ConfigError, match=r"already holds a training run \(.*; pass --resume"):
        train_plugin(*args, out)
    assert _files(out) == before


def test_overwrite_replaces_a_run_and_nothing_else(tiny: Backbone, tmp_path: Path) -> None:
    task_file = write_toy_task(tmp_path, 24)
    config = TrainConfig(steps=1, batch_size=2, eval_every=1, eval_limit=2)
    args = (tiny, [str(task_file)], "soft-prompt", to_json(SoftPromptConfig(length=2)), config)
    out = tmp_path / "run"
    train_plugin(*args, out)
    (out / "last").rename(out / ".last.old-0123abcd")  # an interrupted save, too
    with pytest.raises(ConfigError, match=r"--resume .* --overwrite replaces it; choose one"):
        train_plugin(*args, out, resume=True, overwrite=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"also holds notes\.txt; move them"):
        train_plugin(*args, out, overwrite=True)
    (out / "notes.txt").unlink()
    old = load_checkpoint(out / "best")
    other = TrainConfig(steps=1, batch_size=2, eval_every=1, eval_limit=2, seed=7)
    train_plugin(*args[:4], other, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["best", "last"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "run", "task.json"]
    new = load_checkpoint(out / "best")
    assert new.meta["train_config"]["seed"] == 7 and old.meta["train_config"]["seed"] == 0
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"^out '.*afile' is a file; expected a folder"):
        train_plugin(*args, tmp_path / "afile")


def test_resume_with_more_steps_trains_on_like_an_uninterrupted_run(
    tiny: Backbone, tmp_path: Path
) -> None:
    task_file = write_toy_task(tmp_path, 24)
    prompt = to_json(SoftPromptConfig(length=2))

    def run(out: str, steps: int, **kwargs: bool) -> list[dict[str, object]]:
        config = TrainConfig(steps=steps, batch_size=2, eval_every=3, eval_limit=4, patience=0)
        result = train_plugin(
            tiny, [str(task_file)], "soft-prompt", prompt, config, tmp_path / out, **kwargs
        )
        return result.history

    whole = run("whole", 12)
    assert len(run("more", 6)) == 2
    assert run("more", 12, resume=True) == whole
    for name in ("best", "last"):
        a, b = load_checkpoint(tmp_path / "whole" / name), load_checkpoint(tmp_path / "more" / name)
        assert torch.equal(a.tensors["prompt.toy"], b.tensors["prompt.toy"])
        assert a.meta["metrics"] == b.meta["metrics"]

    with pytest.raises(ConfigError) as fewer:
        run("more", 9, resume=True)
    assert str(fewer.value) == (
        f"--resume: the run saved in '{tmp_path / 'more'}' used steps=12, not 9; resume with "
        "the same options (only a larger --steps is allowed: it trains the run further)"
    )
    config = TrainConfig(steps=12, batch_size=2, eval_every=3, eval_limit=4, lr=0.1)
    with pytest.raises(ConfigError, match=r"used lr=0\.3, not 0\.1; patience=0, not 4; resume"):
        train_plugin(
            tiny, [str(task_file)], "soft-prompt", prompt, config, tmp_path / "more", resume=True
        )


def test_a_run_that_stopped_early_stays_stopped_when_resumed_with_more_steps(
    tiny: Backbone, tmp_path: Path
) -> None:
    task_file = write_toy_task(tmp_path, 24)
    prompt = to_json(SoftPromptConfig(length=2))
    # lr 0: the dev metric never improves after the first evaluation, so patience 1 stops it
    config = TrainConfig(steps=6, batch_size=2, eval_every=1, eval_limit=4, patience=1, lr=1e-12)
    first = train_plugin(tiny, [str(task_file)], "soft-prompt", prompt, config, tmp_path / "r")
    assert first.stopped_early and first.steps_done < 6
    more = TrainConfig(steps=20, batch_size=2, eval_every=1, eval_limit=4, patience=1, lr=1e-12)
    again = train_plugin(
        tiny, [str(task_file)], "soft-prompt", prompt, more, tmp_path / "r", resume=True
    )
    assert again.stopped_early and again.steps_done == first.steps_done
    assert again.history == first.history


def _train_command(task_file: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "frozenlm.cli.main",
        "train",
        "--task",
        str(task_file),
        "--backbone",
        "tiny",
        "--out",
        str(out),
        "--steps",
        "40",
        "--batch-size",
        "4",
        "--eval-every",
        "5",
        "--eval-limit",
        "8",
        "--patience",
        "0",
        "--prompt-length",
        "4",
        *extra,
    ]


@pytest.mark.parametrize(
    ("method", "tensor"), [("soft-prompt", "prompt.toy"), ("prefix", "prefix.toy")]
)
def test_resume_after_kill_matches_an_uninterrupted_run(
    tmp_path: Path, method: str, tensor: str
) -> None:
    task_file = write_toy_task(tmp_path, 48)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    chosen = ("--method", method)
    subprocess.run(
        _train_command(task_file, tmp_path / "whole", *chosen),
        check=True,
        env=env,
        capture_output=True,
    )

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_command(task_file, out, *chosen),
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last" / "training_state.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads((out / "last" / "training_state.json").read_text())
    assert state["loop"]["step"] < 40  # killed mid-run
    subprocess.run(
        _train_command(task_file, out, *chosen, "--resume"),
        check=True,
        env=env,
        capture_output=True,
    )

    whole = load_checkpoint(tmp_path / "whole" / "last")
    resumed = load_checkpoint(out / "last")
    assert torch.equal(whole.tensors[tensor], resumed.tensors[tensor])
    best_whole = load_checkpoint(tmp_path / "whole" / "best").meta["metrics"]
    best_resumed = load_checkpoint(out / "best").meta["metrics"]
    assert best_whole == best_resumed


def test_a_prompt_generator_trains_in_the_same_loop_and_its_loss_falls(
    tiny: Backbone, tmp_path: Path
) -> None:
    task_file = write_toy_task(tmp_path, 48)
    config = TrainConfig(steps=30, batch_size=8, eval_every=10, eval_limit=8, patience=0,
                         )  # fmt: skip
    generator = to_json(PromptGeneratorConfig(length=4, width=32, heads=2, ffn=64))
    result = train_plugin(tiny, [str(task_file)], "id-pt", generator, config, tmp_path / "run")
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in tiny.model.parameters())
    plugin, checkpoint = load_plugin(tmp_path / "run", tiny)
    assert isinstance(plugin, PromptGenerator) and list(checkpoint.meta["tasks"]) == ["toy"]


def test_task_cap_keeps_a_seeded_sample_of_each_large_task(tiny: Backbone) -> None:
    tasks = [load_task("trec"), load_task("topic")]
    capped = training_rows(tiny, tasks, TrainConfig(task_cap=50, seed=3, balance="none"))
    counts = Counter(r.task.name for r in capped)
    assert counts == {"trec": 50, "topic": 50}
    again = training_rows(tiny, tasks, TrainConfig(task_cap=50, seed=3, balance="none"))
    assert [r.example.id for r in again] == [r.example.id for r in capped]
    other = training_rows(tiny, tasks, TrainConfig(task_cap=50, seed=4, balance="none"))
    assert [r.example.id for r in other] != [r.example.id for r in capped]
    with pytest.raises(ConfigError, match="task-cap must be at least 1"):
        TrainConfig(task_cap=0)


def test_balanced_sampling_draws_every_class_equally_often(tiny: Backbone, tmp_path: Path) -> None:
    """An imbalanced task (7 of 8 rows one class): with balance=sample each class is drawn as
    often as the largest; a balanced task's rows are left as they are."""
    rows = [{"text": f"item {i}", "label": "neg" if i % 8 == 0 else "pos"} for i in range(64)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "skewed", "data": "data.jsonl", "input_fields": ["text"],
            "label_field": "label", "labels": {"pos": "yes", "neg": "no"},
            "instruction": "Is it good?"}  # fmt: skip
    (tmp_path / "task.json").write_text(json.dumps(spec))
    task = load_task(str(tmp_path / "task.json"))
    plain = Counter(
        r.example.label for r in training_rows(tiny, [task], TrainConfig(balance="none"))
    )
    sampled = Counter(r.example.label for r in training_rows(tiny, [task], TrainConfig()))
    assert plain["pos"] > 4 * plain["neg"]
    assert sampled["pos"] == sampled["neg"] == plain["pos"]
    (tmp_path / "toy").mkdir()
    toy = load_task(str(write_toy_task(tmp_path / "toy", 40)))
    balanced = training_rows(tiny, [toy], TrainConfig())
    unchanged = training_rows(tiny, [toy], TrainConfig(balance="none"))
    assert [r.example.id for r in balanced] == [r.example.id for r in unchanged]


def test_a_diverging_run_goes_back_to_its_best_state_with_a_lower_rate(
    tiny: Backbone, tmp_path: Path
) -> None:
    """A learning rate far too high makes the loss explode: the loop notices, restores the best
    prompt, lowers the rate and records it; the saved best is still its best dev metric."""
    task_file = write_toy_task(tmp_path, 48)
    config = TrainConfig(
        steps=40, batch_size=8, eval_every=4, eval_limit=8, patience=0,
        optimizer="adamw", lr=30.0, max_grad_norm=None, rising_evals=2,
    )  # fmt: skip
    prompt = to_json(SoftPromptConfig(length=4))
    result = train_plugin(tiny, [str(task_file)], "soft-prompt", prompt, config, tmp_path / "run")
    assert result.recoveries, result.history
    first = result.recoveries[0]
    assert first["lr_factor"] == pytest.approx(config.recover_factor)
    assert "rose" in first["reason"] or "below calibrated zero-shot" in first["reason"]
    assert result.floor is not None and result.majority == pytest.approx(0.5, abs=0.25)
    best = load_checkpoint(tmp_path / "run" / "best").meta["metrics"]
    assert best["dev"] == max(h["dev"] for h in result.history)
    state = json.loads((tmp_path / "run" / "last" / "training_state.json").read_text())
    assert state["loop"]["recoveries"] == result.recoveries


def test_divergence_is_a_fall_from_a_healthy_evaluation_and_recovery_goes_back_to_it(
    tiny: Backbone, tmp_path: Path
) -> None:
    """Below zero-shot before any healthy evaluation is still learning, not diverging; a loss
    that keeps rising is divergence at any time. A recovery goes back to the best healthy
    evaluation, or to the initial state when there has been none."""
    task = load_task(str(write_toy_task(tmp_path, 48)))
    plugin = SoftPromptSet.from_config(SoftPromptConfig(length=4), tiny, [task.spec], seed=0)
    initial = plugin.prompts["toy"].detach().clone()
    config = TrainConfig(steps=10, batch_size=8, eval_limit=8, rising_evals=1)
    run, state = setup(tiny, plugin, [task], config, tmp_path / "run", meta={"kind": "soft"})
    state.floor, run.majority = 0.6, 0.5  # the references this test reasons about
    assert not healthy(run, state, 0.55) and not healthy(run, state, 0.5)
    assert healthy(run, state, 0.6)
    with torch.no_grad():
        plugin.prompts["toy"].add_(1.0)  # "training" moved the prompt
    state.step, state.history = 5, [{"loss": 1.0}]
    assert divergence(run, state, 0.3) is None  # not yet healthy: still learning
    keep_safe(run, state, 0.3)
    assert state.safe is None
    state.history.append({"loss": 2.0})
    reason = divergence(run, state, 0.3)
    assert reason is not None and "rose" in reason
    assert recover(run, state, reason)
    assert state.recoveries[-1]["back_to_step"] == 0
    assert torch.equal(plugin.prompts["toy"].detach(), initial)  # no healthy state: the start
    with torch.no_grad():
        plugin.prompts["toy"].add_(2.0)
    state.step, state.history = 8, [{"loss": 1.0}]
    keep_safe(run, state, 0.7)  # healthy: what a recovery now goes back to
    healthy_prompt = plugin.prompts["toy"].detach().clone()
    assert (state.safe, state.safe_step) == (0.7, 8)
    with torch.no_grad():
        plugin.prompts["toy"].add_(3.0)
    state.step, state.history = 9, [{"loss": 1.0}, {"loss": 0.9}]
    reason = divergence(run, state, 0.55)
    assert reason is not None and "below calibrated zero-shot" in reason and "0.700" in reason
    assert recover(run, state, reason)
    assert state.recoveries[-1]["back_to_step"] == 8
    assert torch.equal(plugin.prompts["toy"].detach(), healthy_prompt)
    assert state.lr_factor == pytest.approx(config.recover_factor**2)
    state.floor = 0.4  # a floor below the majority class: the label prior is the next test
    state.history = [{"loss": 1.0}, {"loss": 0.8}]
    assert "majority" in (divergence(run, state, 0.5) or "")


def test_warmup_raises_the_rate_linearly() -> None:
    config = TrainConfig(warmup=4)
    assert [config.lr_scale(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert TrainConfig().lr_scale(0) == 1.0
