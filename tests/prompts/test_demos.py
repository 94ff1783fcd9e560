"""Demonstration selection: balanced counts, seeded determinism, nearest by MiniLM."""

from __future__ import annotations

from collections import Counter

import pytest

from frozenlm.errors import ConfigError
from frozenlm.prompts.demos import DemoSelector
from frozenlm.tasks.spec import Example, TaskSpec

TOPICS = TaskSpec(
    name="toy-topics",
    kind="classification",
    input_fields=("text",),
    instruction="Classify the topic.",
    template="Text: {text}",
    labels={"a": "alpha", "b": "beta", "c": "gamma"},
)
# 10 a, 6 b, 2 c: unbalanced on purpose (balanced counts hold up to k = 6)
POOL = tuple(
    Example(f"{label}{i}", {"text": f"{label} sentence {i}"}, label)
    for label, n in (("a", 10), ("b", 6), ("c", 2))
    for i in range(n)
)
QUERY = Example("q", {"text": "a new sentence"}, "a")


def ids(examples: list[Example]) -> list[str]:
    return [example.id for example in examples]


@pytest.mark.parametrize(("k", "expected"), [(3, [1, 1, 1]), (6, [2, 2, 2]), (4, [1, 1, 2])])
def test_balanced_has_equal_counts_per_label(k, expected):
    demos = DemoSelector(POOL, TOPICS, k=k, selection="balanced", seed=0).select(QUERY)
    assert len(demos) == k
    assert len(set(ids(demos))) == k
    assert sorted(Counter(d.label for d in demos).values()) == expected


def test_balanced_remainder_and_short_labels():
    counts = Counter(
        d.label for d in DemoSelector(POOL, TOPICS, k=5, selection="balanced", seed=1).select(QUERY)
    )
    assert sorted(counts.values()) == [1, 2, 2]  # 5 // 3 each, 2 more on distinct labels
    counts = Counter(
        d.label
        for d in DemoSelector(POOL, TOPICS, k=12, selection="balanced", seed=0).select(QUERY)
    )
    assert counts["c"] == 2  # only 2 exist; the rest is shared among the others
    assert sum(counts.values()) == 12
    assert counts["a"] >= 4 and counts["b"] >= 4


@pytest.mark.parametrize("selection", ["random", "balanced"])
def test_fixed_selection_is_seeded(selection):
    def pick(seed: int) -> list[str]:
        return ids(DemoSelector(POOL, TOPICS, k=6, selection=selection, seed=seed).select(QUERY))

    assert pick(0) == pick(0)
    assert pick(0) != pick(1)
    selector = DemoSelector(POOL, TOPICS, k=6, selection=selection, seed=3)
    assert selector.fixed()
    other = Example("z", {"text": "something else"}, "b")
    assert ids(selector.select(QUERY)) == ids(selector.select(other))  # one sample per run


@pytest.mark.parametrize("selection", ["random", "balanced"])
def test_fixed_selection_never_shows_the_example_itself(selection):
    selector = DemoSelector(POOL, TOPICS, k=4, selection=selection, seed=0)
    fixed = selector.select(QUERY)
    member = fixed[0]
    replaced = selector.select(member)
    assert member.id not in ids(replaced)
    assert len(replaced) == 4
    assert len(set(ids(fixed)) & set(ids(replaced))) == 3  # only that one is replaced
    if selection == "balanced":
        assert Counter(d.label for d in replaced) == Counter(d.label for d in fixed)


def test_random_sample_is_uniform_over_the_pool_not_balanced():
    labels = Counter()
    for seed in range(200):
        selector = DemoSelector(POOL, TOPICS, k=3, selection="random", seed=seed)
        labels.update(d.label for d in selector.select(QUERY))
    assert labels["a"] > 2 * labels["c"]  # follows the pool's label frequencies


def test_k_zero_and_k_larger_than_pool():
    assert DemoSelector(POOL, TOPICS, k=0, selection="nearest", seed=0).select(QUERY) == []
    demos = DemoSelector(POOL[:3], TOPICS, k=8, selection="random", seed=0).select(QUERY)
    assert sorted(ids(demos)) == sorted(ids(POOL[:3]))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="selection"):
        DemoSelector(POOL, TOPICS, k=2, selection="best", seed=0)
    with pytest.raises(ConfigError, match=">= 0"):
        DemoSelector(POOL, TOPICS, k=-1, selection="random", seed=0)


NEWS = TaskSpec(
    name="toy-news",
    kind="classification",
    input_fields=("text",),
    instruction="Classify the topic.",
    template="{text}",
    labels={"sport": "sport", "food": "food", "tech": "technology"},
)
NEWS_POOL = (
    Example("s1", {"text": "The striker scored twice as the team won the league match."}, "sport"),
    Example("f1", {"text": "Simmer the tomatoes with garlic and olive oil for the sauce."}, "food"),
    Example("t1", {"text": "The new smartphone ships with a faster processor and chip."}, "tech"),
    Example("s2", {"text": "The goalkeeper saved a penalty in the football cup final."}, "sport"),
    Example("f2", {"text": "Knead the bread dough and let it rise before baking."}, "food"),
    Example("t2", {"text": "The software update fixes a security bug in the browser."}, "tech"),
    Example("s3", {"text": "Fans cheered as the club's midfielder was sent off."}, "sport"),
)


@pytest.fixture(scope="module")
def nearest() -> DemoSelector:
    return DemoSelector(NEWS_POOL, NEWS, k=3, selection="nearest", seed=0)


def test_nearest_picks_semantically_closest_most_similar_last(nearest):
    assert not nearest.fixed()
    query = Example("q", {"text": "Who won the football game last night? The soccer score?"}, "")
    demos = nearest.select(query)
    assert {d.id for d in demos} == {"s1", "s2", "s3"}
    recipe = Example("r", {"text": "How long should I bake the bread dough?"}, "")
    assert nearest.select(recipe)[-1].id == "f2"  # the closest is next to the input
    assert nearest.select(recipe)[0].id != "f2"


def test_nearest_never_returns_the_example_itself(nearest):
    member = NEWS_POOL[3]  # s2
    demos = nearest.select(member)
    assert "s2" not in ids(demos)
    assert {"s1", "s3"} <= set(ids(demos))  # its sports neighbours, without itself


def test_encoder_loads_only_for_nearest():
    assert DemoSelector(NEWS_POOL, NEWS, k=2, selection="random", seed=0)._encoder is None
    random_demos = DemoSelector(NEWS_POOL, NEWS, k=2, selection="random", seed=0)
    random_demos.select(NEWS_POOL[0])
    assert random_demos._encoder is None


def test_nearest_batch_matches_single_and_embeds_pool_once(nearest):
    queries = [NEWS_POOL[0], Example("q", {"text": "A new laptop chip"}, "")]
    batch = nearest.select_many(queries)
    assert [ids(x) for x in batch] == [ids(nearest.select(q)) for q in queries]
    matrix = nearest._pool_matrix()
    nearest.select(queries[1])
    assert nearest._pool_matrix() is matrix
    assert matrix.shape == (len(NEWS_POOL), 384)
