"""The recursive LM's connector: an untrained one is a soft prompt of P + N tokens, it reads pass
1 (the input changes its vectors once trained), only it trains, and it saves, loads, starts from
a pre-trained connector and mixes with other plug-ins' rows."""

from pathlib import Path

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.plugins.connector import Connector, ConnectorConfig
from frozenlm.plugins.protocol import conditioning_by_row
from frozenlm.plugins.registry import load_plugin, new_plugin
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin

SMALL = {"tokens": 3, "prompt_length": 2, "width": 16, "heads": 2, "ffn": 32}
QUICK = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_limit=4, optimizer="adamw", lr=1e-2)


@pytest.fixture(autouse=True)
def _memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROZENLM_PASS1_CACHE", "off")


def _connector(tiny: Backbone, **kw: object) -> Connector:
    plugin = new_plugin("recursion", SMALL | kw, tiny, [load_task("sentiment").spec], seed=0)
    assert isinstance(plugin, Connector)
    return plugin


def test_an_untrained_connector_is_a_soft_prompt_then_reads_the_input(tiny: Backbone) -> None:
    connector = _connector(tiny)
    task = load_task("sentiment")
    a, b = connector.condition(task.spec, list(task.train[:2]))
    assert a.soft is not None and b.soft is not None
    assert a.soft.shape == (2 + 3, tiny.hidden_size)
    assert torch.allclose(a.soft, b.soft)  # the projection starts at zero
    with torch.no_grad():
        connector.write.weight.normal_(std=0.1)
    a, b = connector.condition(task.spec, list(task.train[:2]))
    assert a.soft is not None and b.soft is not None
    assert not torch.allclose(a.soft[2:], b.soft[2:])  # pass 1 of each input shows through
    assert torch.equal(a.soft[:2], b.soft[:2])  # the task's pass-2 prompt is shared


def test_only_the_connector_trains_and_pass_one_has_no_graph(tiny: Backbone) -> None:
    connector = _connector(tiny)
    task = load_task("sentiment")
    states = connector.first.states(task.spec, list(task.train[:2]))
    assert not any(s.requires_grad for s in states)
    (made,) = connector.condition(task.spec, list(task.train[:1]))
    assert made.soft is not None
    made.soft.sum().backward()
    assert (
        connector.write.weight.grad is not None and connector.prompts["sentiment"].grad is not None
    )
    assert not any(p.requires_grad for p in tiny.model.parameters())
    groups = connector.param_groups(1e-2)
    assert [g["lr"] for g in groups] == [1e-2, pytest.approx(1e-4)]
    assert sum(p.numel() for g in groups for p in g["params"]) == connector.num_trainable()


def test_trains_saves_loads_and_evaluates_like_any_plugin(tiny: Backbone, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    train_plugin(tiny, ["sentiment"], "recursion", SMALL, QUICK, out)
    loaded, checkpoint = load_plugin(out, tiny)
    assert isinstance(loaded, Connector) and checkpoint.meta["kind"] == "recursion"
    task = load_task("sentiment")
    report = evaluate(tiny, task, EvalConfig(limit=6), loaded)
    assert report.method == "recursion" and report.n == 6
    assert all(p["positions"] > 5 for p in report.predictions)  # prompt + P + N positions

    tensors = dict(checkpoint.tensors)
    tensors["queries"] = torch.zeros(4, 16)
    with pytest.raises(CheckpointError, match="'queries' is \\[4, 16\\]"):
        Connector.from_tensors(tensors, ConnectorConfig(**SMALL), tiny)


def test_starts_from_a_pretrained_network_and_refuses_another_shape(
    tiny: Backbone, tmp_path: Path
) -> None:
    out = tmp_path / "pre"
    train_plugin(tiny, ["trec"], "recursion", SMALL, QUICK, out)
    saved, _ = load_plugin(out, tiny)
    started = _connector(tiny, init_from=str(out / "best"))
    assert torch.equal(started.queries, saved.queries)  # type: ignore[attr-defined]
    assert torch.equal(started.write.weight, saved.write.weight)  # type: ignore[attr-defined]
    assert "sentiment" in started.prompts and "trec" not in started.prompts  # prompts are not
    with pytest.raises(ConfigError, match="must match the saved connector"):
        _connector(tiny, init_from=str(out / "best"), tokens=5)


def test_pass_one_runs_with_a_trained_soft_prompt_that_pass_two_starts_from(
    tiny: Backbone, tmp_path: Path
) -> None:
    prompt = tmp_path / "sp"
    train_plugin(
        tiny, ["sentiment"], "soft-prompt", {"length": 2, "position": "input"}, QUICK, prompt
    )
    soft, _ = load_plugin(prompt, tiny)
    connector = _connector(tiny, first_prompt=str(prompt))
    assert torch.equal(connector.first_prompts["sentiment"], soft.prompts["sentiment"])  # type: ignore[attr-defined]
    assert torch.equal(connector.prompts["sentiment"], soft.prompts["sentiment"])  # type: ignore[attr-defined]
    assert not connector.first_prompts["sentiment"].requires_grad
    with pytest.raises(ConfigError, match="position"):
        _connector(tiny, first_prompt=str(prompt), position="start")
    with pytest.raises(ConfigError, match="not a soft prompt"):
        rec = tmp_path / "rec"
        train_plugin(tiny, ["sentiment"], "recursion", SMALL, QUICK, rec)
        _connector(tiny, first_prompt=str(rec))


def test_connector_rows_mix_with_a_soft_prompts_rows(tiny: Backbone, tmp_path: Path) -> None:
    connector = _connector(tiny)
    prompt = new_plugin("soft-prompt", {"length": 4}, tiny, [load_task("trec").spec], seed=0)
    sentiment, trec = load_task("sentiment"), load_task("trec")
    rows = [
        (connector, sentiment.spec, sentiment.train[0]),
        (prompt, trec.spec, trec.train[0]),
        (connector, sentiment.spec, sentiment.train[1]),
    ]
    made = conditioning_by_row(rows)
    assert [m.soft.shape[0] for m in made if m.soft is not None] == [5, 4, 5]


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        ConnectorConfig(width=10, heads=4)
    with pytest.raises(ConfigError, match="tokens"):
        ConnectorConfig(tokens=0)


def test_joined_by_adding_an_untrained_connector_is_its_first_prompt(
    tiny: Backbone, tmp_path: Path
) -> None:
    prompt = tmp_path / "sp"
    config = {"length": 3, "position": "input"}
    train_plugin(tiny, ["sentiment"], "soft-prompt", config, QUICK, prompt)
    soft, _ = load_plugin(prompt, tiny)
    connector = _connector(tiny, first_prompt=str(prompt), join="add", prompt_length=3)
    task = load_task("sentiment")
    (made,) = connector.condition(task.spec, list(task.train[:1]))
    assert made.soft is not None
    assert torch.equal(made.soft, soft.prompts["sentiment"])  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="must equal"):
        ConnectorConfig(join="add", tokens=4, prompt_length=3)
