from dataclasses import replace
from pathlib import Path

from frozenlm.backbone import Backbone
from frozenlm.compare.methods import BUDGETS, METHODS
from frozenlm.evaluation.evaluate import EvalConfig
from frozenlm.tasks import load_task


def test_prompt_design_is_calibrated_as_measured_and_counts_the_dev_examples_it_reads(
    tiny: Backbone, tmp_path: Path
) -> None:
    task, budget = load_task("trec"), BUDGETS["quick"]
    for name in ("zero-shot", "few-shot"):
        fitted = METHODS[name].fit(tiny, task, budget, 0, tmp_path)
        config = fitted.eval_config
        assert config.calibrate and config.calibration == EvalConfig.calibration == "dev"
        assert fitted.labelled_dev == min(len(task.dev), EvalConfig.dev_limit or len(task.dev))
    # Without a dev split there is nothing to choose on: uniform calibration, no dev examples.
    fitted = METHODS["zero-shot"].fit(tiny, replace(task, dev=()), budget, 0, tmp_path)
    assert fitted.eval_config.calibration == "uniform" and fitted.labelled_dev == 0
    trivia = METHODS["zero-shot"].fit(tiny, load_task("trivia"), budget, 0, tmp_path)
    assert not trivia.eval_config.calibrate and trivia.labelled_dev == 0
