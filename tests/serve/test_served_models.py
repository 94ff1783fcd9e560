"""The served-models table: names, LRU eviction with reload on the next request, unloading,
and the checks on what may be loaded at run time."""

from __future__ import annotations

from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.serve.models import ModelTable, ServeError
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny: Backbone) -> Path:
    folder = tmp_path_factory.mktemp("table")
    config = TrainConfig(steps=1, batch_size=2, eval_every=1, eval_limit=2)
    soft = to_json(SoftPromptConfig(length=2))
    train_plugin(tiny, ["sentiment"], "soft-prompt", soft, config, folder / "a")
    train_plugin(tiny, ["sentiment", "trec"], "soft-prompt", soft, config, folder / "b")
    return folder


def test_the_least_recently_used_plugin_is_evicted_and_reloads_on_its_next_request(
    tiny: Backbone, root: Path
) -> None:
    table = ModelTable(tiny, max_loaded=1)
    (a,) = table.add(root / "a")
    both = table.add(root / "b")
    assert [m.name for m in both] == ["b/sentiment", "b/trec"]  # one model per task
    assert a.plugin is None and all(m.plugin is not None for m in both)
    assert table.get("a").plugin is not None  # reloaded from its folder
    assert all(m.plugin is None for m in both)  # and b made room
    assert both[0].plugin is None and table.get("b/trec").plugin is both[0].plugin


def test_names_clash_unload_and_unknown_models_are_refused_with_their_status(
    tiny: Backbone, root: Path
) -> None:
    table = ModelTable(tiny, root=root)
    table.load("a")
    with pytest.raises(ServeError) as err:
        table.load("a/best")
    assert err.value.status == 409
    assert table.unload("a") == ["a"]
    with pytest.raises(ServeError) as err:
        table.get("a")
    assert err.value.status == 404 and "not served here" in str(err.value)
    with pytest.raises(ServeError) as err:
        table.load("b", name="bad name!")
    assert err.value.status == 400
    with pytest.raises(ServeError) as err:
        ModelTable(tiny).load("a")  # no root given at start
    assert err.value.status == 403
