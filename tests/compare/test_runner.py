import json
from collections import Counter
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.compare import Budget, CompareConfig, compare
from frozenlm.compare.runner import (
    Shard,
    parse_methods,
    parse_train_sizes,
    plan,
    report_only,
    subsample,
)
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import EvalConfig
from frozenlm.metrics import macro_f1
from frozenlm.plugins.prompt_generator import PromptGenerator, PromptGeneratorConfig
from frozenlm.tasks import load_task

TINY_BUDGET = Budget(
    "test", steps=2, batch_size=2, eval_every=2, dev_limit=4, test_limit=6, train_sizes=(4, 8)
)


def test_subsample_is_class_balanced_and_seeded() -> None:
    task = load_task("trec")
    small = subsample(task, 12, seed=3)
    assert len(small.train) == 12
    assert set(Counter(ex.label for ex in small.train).values()) == {2}  # 6 labels x 2
    assert subsample(task, 12, seed=3).train == small.train
    assert subsample(task, 12, seed=4).train != small.train
    assert subsample(task, None, seed=3) is task


def test_a_generation_task_is_subsampled_at_random_not_by_answer() -> None:
    task = load_task("trivia")
    small = subsample(task, 20, seed=3)
    assert len(small.train) == 20 and subsample(task, 20, seed=3).train == small.train
    first = sorted({ex.label for ex in task.train})[:20]  # what balancing by answer took
    assert sorted(ex.label for ex in small.train) != first
    assert {ex.id for ex in small.train} <= {ex.id for ex in task.train}


def test_the_plan_adds_the_domain_shift_partner_for_shift_methods_only() -> None:
    config = CompareConfig(tasks=("sentiment",), methods=("zero-shot", "peft-prompt", "lora"),
                           budget=TINY_BUDGET)  # fmt: skip
    cells = plan(config)
    assert ("sentiment", "lora", 4, False) in cells and ("sentiment", "lora", 8, True) in cells
    assert ("sentiment", "zero-shot", None, True) in cells
    partner = [c for c in cells if c[0] == "tweets-binary"]
    assert {c[1] for c in partner} == {"zero-shot", "lora"}  # peft-prompt is no partner method
    assert ("tweets-binary", "lora", 8, True) in partner
    assert not any(c[0] == "tweets-binary" for c in plan(
        CompareConfig(tasks=("sentiment",), budget=TINY_BUDGET, domain_shift=False)))  # fmt: skip


def test_bad_method_and_size_lists_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown method 'bert'"):
        parse_methods("zero-shot,bert")
    with pytest.raises(ConfigError, match="train size 'ten'"):
        parse_train_sizes("16,ten")
    assert parse_train_sizes("16, all") == (16, None)


def test_compare_runs_every_method_and_continues_after_an_interruption(
    tiny: Backbone, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    config = CompareConfig(tasks=("sentiment",), methods=tuple(parse_methods("all")),
                           budget=TINY_BUDGET, domain_shift=False)  # fmt: skip
    result = compare(tiny, config, out)
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert json.loads(json.dumps(result.cells)) == cells and result.report == out / "report.md"
    done = {(c["method"], c["train_size"]) for c in cells if c["status"] == "done"}
    assert ("zero-shot", "all") in done and ("few-shot", "all") in done
    for method in ("soft-prompt", "peft-prompt", "lora", "full-ft", "id-pt", "plugin", "supericl"):
        assert {(method, "4"), (method, "8")} <= done
    assert not [c for c in cells if c["status"] != "done"]
    by = {(c["method"], c["train_size"]): c for c in cells}
    assert by[("soft-prompt", "8")]["costs"]["trainable_parameters"] == 20 * tiny.hidden_size
    assert by[("full-ft", "8")]["costs"]["trainable_parameters"] == tiny.num_parameters
    generator = PromptGenerator.from_config(PromptGeneratorConfig(), tiny, [], seed=0)
    assert by[("id-pt", "8")]["costs"]["trainable_parameters"] == generator.num_trainable()
    assert not by[("full-ft", "8")]["costs"]["shares_backbone"]
    assert by[("soft-prompt", "4")]["costs"]["labelled_train"] == 4
    # SuperICL: 2 of the 4 examples are demonstrations, the plug-in trains on the other 2
    assert by[("supericl", "4")]["costs"]["labelled_train"] == 4
    assert by[("plugin", "4")]["costs"]["labelled_train"] == 2
    assert by[("supericl", "8")]["costs"]["mean_prompt_tokens"] > 0
    assert not by[("plugin", "8")]["costs"]["shares_backbone"]  # it needs no backbone
    text = result.report.read_text()
    assert result.summary == text.split("\n\n## Costs", 1)[0]
    assert "## Quality" in text and "Input-dependent prompts on sentiment beat" in text
    for png in ("quality_vs_parameters", "quality_vs_time", "learning_curves", "serving_memory"):
        assert (out / f"{png}.png").stat().st_size > 10_000

    # An interrupted run: one cell lost. The same command recomputes only that cell.
    lost = out / "cells" / "sentiment" / "lora__4.json"
    lost.unlink()
    kept = out / "cells" / "sentiment" / "full-ft__8.json"
    before = kept.stat().st_mtime_ns
    compare(tiny, config, out)
    assert lost.exists() and kept.stat().st_mtime_ns == before

    other = CompareConfig(tasks=("sentiment",), budget=TINY_BUDGET, seed=1)
    with pytest.raises(ConfigError, match="another seed"):
        compare(tiny, other, out)


def test_every_cell_states_the_majority_class_of_the_whole_task(
    tiny: Backbone, tmp_path: Path
) -> None:
    # A class-balanced subsample of trec ties on every label; its tie-break must not become the
    # baseline ("ABBR", nearly absent from test, gave a majority accuracy of 0.0).
    budget = Budget(
        "test", steps=1, batch_size=2, eval_every=1, dev_limit=4, test_limit=40,
        train_sizes=(12,),
    )  # fmt: skip
    config = CompareConfig(tasks=("trec",), methods=("zero-shot", "soft-prompt"), budget=budget,
                           domain_shift=False)  # fmt: skip
    cells = {c["method"]: c for c in compare(tiny, config, tmp_path / "cmp").cells}
    task = load_task("trec")
    label = Counter(ex.label for ex in task.train).most_common(1)[0][0]
    expected = sum(ex.label == label for ex in task.test[:40]) / 40
    assert expected > 0
    assert cells["zero-shot"]["test"]["majority"] == pytest.approx(expected)
    assert cells["soft-prompt"]["test"]["majority"] == pytest.approx(expected)
    gold = [ex.label for ex in task.test[:40]]
    for cell in cells.values():
        test = cell["test"]
        assert test["majority_label"] == label
        majority_f1 = macro_f1(gold, [label] * 40, list(task.spec.labels))
        assert test["majority_macro_f1"] == pytest.approx(majority_f1)
        f1 = test["macro_f1"]
        assert f1["low"] <= f1["value"] <= f1["high"] and sum(test["predicted"].values()) == 40
    calibration = cells["zero-shot"]["calibration"]
    assert (
        calibration["mode"] == EvalConfig.calibration
        and cells["soft-prompt"]["calibration"] is None
    )


def test_shards_run_disjoint_cells_into_one_folder_and_the_last_writes_the_report(
    tiny: Backbone, tmp_path: Path
) -> None:
    config = CompareConfig(tasks=("sentiment",), methods=("zero-shot", "soft-prompt", "lora"),
                           budget=TINY_BUDGET, domain_shift=False)  # fmt: skip
    whole = compare(tiny, config, tmp_path / "whole")
    out = tmp_path / "sharded"
    with pytest.raises(ConfigError, match="holds no comparison"):
        report_only(out)
    first = compare(tiny, config, out, Shard.parse("1/3"))
    assert first.report is None and first.missing > 0
    assert not (out / "report.md").exists()
    with pytest.raises(ConfigError, match=r"cells are not finished yet \(sentiment/"):
        report_only(out)
    compare(tiny, config, out, Shard.parse("3/3"))
    ran = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    last = compare(tiny, config, out, Shard.parse("2/3"))
    assert last.report == out / "report.md"  # the shard that completes the set reports
    for path, stamp in ran.items():
        assert path.stat().st_mtime_ns == stamp  # no cell ran twice
    cells = sorted((out / "cells").rglob("*.json"))
    assert [p.relative_to(out) for p in cells] == [
        p.relative_to(tmp_path / "whole")
        for p in sorted((tmp_path / "whole" / "cells").rglob("*.json"))
    ]
    keys = [(c["task"], c["method"], c["train_size"]) for c in last.cells]
    assert keys == [(c["task"], c["method"], c["train_size"]) for c in whole.cells]
    for mine, ref in zip(last.cells, whole.cells, strict=True):
        assert mine["test"] == ref["test"]  # the same numbers as one run of every cell
    again = report_only(out)
    assert "Assembled from cells run apart" in again.report.read_text()  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="K/N"):
        Shard.parse("4/3")
