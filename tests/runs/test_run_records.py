"""Run records as data: written, read back, refused when malformed, listed by kind."""

import json
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.runs.records import experiment_key, list_records, load_record, write_record
from frozenlm.tasks import load_task


def test_a_record_reads_back_as_written(tmp_path: Path, tiny: Backbone) -> None:
    task = load_task("trec")
    command = ["eval", "--task", "trec", "--backbone", "tiny", "--out", "x.json"]
    metrics = {"trec": {"accuracy": {"value": 0.5, "low": 0.4, "high": 0.6, "n": 8}}}
    path = write_record("eval", command, backbone=tiny, tasks=[task], config={"limit": 8},
                        metrics=metrics, costs={"seconds": 1.0}, outputs=["x.json"],
                        runs=tmp_path)  # fmt: skip
    record = load_record(path)
    assert load_record(record.id, tmp_path) == record
    assert record.command == command and record.experiment == "eval --task trec"
    assert record.split_hash == {"trec": task.split_hash()}
    assert record.backbone["fingerprint"] == tiny.fingerprint
    assert record.headline() == "trec accuracy 0.500"
    assert record.flat_metrics() == {"trec accuracy": {"value": 0.5, "low": 0.4, "high": 0.6,
                                                       "n": 8.0}}  # fmt: skip
    assert list_records(tmp_path, kind="eval") == [record]
    assert list_records(tmp_path, kind="train") == []


def test_where_a_run_happens_is_not_part_of_the_experiment() -> None:
    command = ["train", "--task", "trec", "--device", "cuda:0", "--dtype=bfloat16", "--resume",
               "--out", "o", "--backbone=tiny", "--steps", "2", "--overwrite",
               "--allow-pickle-weights"]  # fmt: skip
    assert experiment_key(command) == "train --task trec --steps 2"


def test_an_unknown_kind_and_a_missing_record_are_refused(tmp_path: Path, tiny: Backbone) -> None:
    with pytest.raises(ConfigError, match="unknown run kind 'serve'"):
        write_record("serve", [], backbone=tiny, tasks={}, config={}, metrics={}, costs={},
                     outputs=[], runs=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=r"no run record 'nope'.*frozenlm runs"):
        load_record("nope", tmp_path)


def test_an_unreadable_file_is_skipped_when_listing(tmp_path: Path, tiny: Backbone) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"id": "x"}))
    path = write_record("train", ["train"], backbone=tiny, tasks={}, config={}, metrics={},
                        costs={}, outputs=[], runs=tmp_path)  # fmt: skip
    assert [r.id for r in list_records(tmp_path)] == [path.stem]
