"""Write sentiment-87: the built-in sentiment task's rows subsampled so that 87% are positive
('fresh'), as a user task file (task.yaml + one JSONL file per split) beside this script.

Each split takes the first rows of each label of the same split of `load_task("sentiment")`
(seed 0), in that split's order: train 870 + 130, dev 174 + 26, test 174 + 26.

    python docs/results/quality/make_sentiment_87.py
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from frozenlm.tasks import Example, load_task

SIZES = {"train": (870, 130), "dev": (174, 26), "test": (174, 26)}
"""(positive, negative) rows per split: 87% positive in each."""


def subsample(examples: tuple[Example, ...], positive: int, negative: int) -> list[Example]:
    fresh = [ex for ex in examples if ex.label == "fresh"][:positive]
    rotten = [ex for ex in examples if ex.label == "rotten"][:negative]
    if (len(fresh), len(rotten)) != (positive, negative):
        raise SystemExit(f"sentiment has too few rows for {positive} + {negative}")
    keep = {ex.id for ex in fresh + rotten}
    return [ex for ex in examples if ex.id in keep]  # the split's own (seeded) order


def main() -> None:
    folder = Path(__file__).resolve().parent / "sentiment-87"
    folder.mkdir(exist_ok=True)
    source = load_task("sentiment", seed=0)
    for split, (positive, negative) in SIZES.items():
        rows = subsample(source.split(split), positive, negative)
        lines = [json.dumps({"text": ex.fields["text"], "label": ex.label}) for ex in rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = source.spec
    task = {
        "name": "sentiment-87",
        "data": {split: f"{split}.jsonl" for split in SIZES},
        "input_fields": list(spec.input_fields),
        "label_field": "label",
        "labels": dict(spec.labels),
        "instruction": spec.instruction,
        "template": spec.template,
    }
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    main()
