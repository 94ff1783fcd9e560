"""SuperICL runs: the context holds the plug-in lines where it should, the metrics agree with the
per-example rows, explanations come for overrides only, the HTTP backend runs the same job."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import LocalServer, write_toy_task
from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.prompts.render import PromptConfig, Prompter
from frozenlm.supericl import (
    LocalBackend,
    OpenAIBackend,
    OpenAIConfig,
    SmallClassifier,
    SuperICLConfig,
    pick_demos,
    run_supericl,
)
from frozenlm.supericl.run import as_report, plugin_note
from frozenlm.tasks import load_task
from frozenlm.tasks.spec import Task


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return load_task(str(write_toy_task(tmp_path_factory.mktemp("toy"), 80)))


def test_plugin_note_is_the_published_line() -> None:
    assert (
        plugin_note("MiniLM", "positive", 0.8765) == "MiniLM prediction: positive (confidence 0.88)"
    )
    assert plugin_note("MiniLM", "positive", None) == "MiniLM prediction: positive"


def test_demonstrations_and_test_input_carry_the_plugin_line(tokenizer: object, toy: Task) -> None:
    demos = list(toy.train[:2])
    notes = {d.id: f"P prediction: {d.id}" for d in [*demos, toy.test[0]]}
    config = PromptConfig(shots=2, framing="label", chat_template=False)
    prompter = Prompter(
        toy.spec, tokenizer, config, max_tokens=512, answer_tokens=2,
        annotate=lambda ex: notes[ex.id],
    )  # fmt: skip
    text = prompter.render(toy.test[0], demos).text
    blocks = text.split("\n\n")
    assert blocks[0].startswith("Is the item good?")
    for demo, block in zip(demos, blocks[1:3], strict=True):
        answer = toy.spec.labels[demo.label]
        assert block == f"Text: {demo.fields['text']}\nP prediction: {demo.id}\nLabel: {answer}"
    assert (
        blocks[3] == f"Text: {toy.test[0].fields['text']}\nP prediction: {toy.test[0].id}\nLabel:"
    )


def _run(backend: object, toy: Task, tokenizer: object, **options: object):
    config = SuperICLConfig(shots=4, limit=12, **options)  # type: ignore[arg-type]
    demos = pick_demos(toy, config)
    plugin = SmallClassifier.tiny(toy)
    return run_supericl(toy, backend, plugin, demos, tokenizer, config)  # type: ignore[arg-type]


def test_metrics_agree_with_the_rows_and_the_context_grows_as_expected(
    tiny: Backbone, toy: Task
) -> None:
    result = _run(LocalBackend(tiny, chat_template=False), toy, tiny.tokenizer)
    rows, m = result.predictions, result.metrics
    assert len(rows) == result.n == 12
    for key in ("icl", "plugin", "supericl", "supericl_no_confidence", "supericl_no_demos"):
        assert m[f"{key}_accuracy"] == pytest.approx(sum(r[key] == r["gold"] for r in rows) / 12)
    overrides = [r for r in rows if r["supericl"] != r["plugin"]]
    assert m["override_rate"] == pytest.approx(len(overrides) / 12)
    if overrides:
        right = sum(r["supericl"] == r["gold"] for r in overrides) / len(overrides)
        assert m["override_accuracy"] == pytest.approx(right)
    else:
        assert m["override_accuracy"] is None
    tokens = result.context_tokens
    assert tokens["supericl_no_demos"] < tokens["icl"] < tokens["supericl"]
    assert tokens["supericl_no_confidence"] < tokens["supericl"]
    report = as_report(result, "supericl")
    assert report.metrics["accuracy"].value == m["supericl_accuracy"]
    assert as_report(result, "plugin").prompt_stats["mean_prompt_tokens"] == 0.0


def test_explanations_are_asked_for_overrides_only(tiny: Backbone, toy: Task) -> None:
    result = _run(
        LocalBackend(tiny), toy, tiny.tokenizer, explanation=True, variants=("icl", "supericl")
    )
    assert "supericl_no_demos_accuracy" not in result.metrics
    for row in result.predictions:
        assert ("explanation" in row) == row["override"]
        if row["override"]:
            assert isinstance(row["explanation"], str)


def test_an_overflowing_context_drops_demonstrations_not_the_input(
    tiny: Backbone, toy: Task, caplog: pytest.LogCaptureFixture
) -> None:
    config = SuperICLConfig(shots=4, limit=3)
    demos = pick_demos(toy, config)
    plugin = SmallClassifier.tiny(toy)
    backend = LocalBackend(tiny, chat_template=False)
    with caplog.at_level(logging.WARNING):
        result = run_supericl(toy, backend, plugin, demos, tiny.tokenizer, config, max_tokens=60)
    assert "dropped demonstrations to fit 60 tokens" in caplog.text
    assert result.context_tokens["supericl"] <= 60
    assert result.metrics["supericl_accuracy"] is not None


def test_the_http_backend_runs_the_same_job_and_a_rerun_spends_no_calls(
    openai_server: LocalServer, tiny: Backbone, toy: Task, tmp_path: Path
) -> None:
    def backend() -> OpenAIBackend:
        return OpenAIBackend(OpenAIConfig(openai_server.url, "tiny", cache=tmp_path / "cache"))

    first = _run(backend(), toy, tiny.tokenizer, variants=("icl", "supericl"))
    assert first.calls["requests"] == 2 * 12  # ICL and SuperICL, one request per example
    sent = len(openai_server.requests)
    again = _run(backend(), toy, tiny.tokenizer, variants=("icl", "supericl"))
    assert again.calls == {"requests": 0, "cache_hits": 24}
    assert len(openai_server.requests) == sent
    assert again.metrics == first.metrics


def test_generation_tasks_and_nearest_demonstrations_are_refused(tiny: Backbone) -> None:
    with pytest.raises(ConfigError, match="must be random or balanced"):
        SuperICLConfig(selection="nearest")  # type: ignore[arg-type]
    trivia = load_task("trivia")
    with pytest.raises(ConfigError, match="needs a classification task"):
        run_supericl(trivia, LocalBackend(tiny), None, [], tiny.tokenizer)  # type: ignore[arg-type]
