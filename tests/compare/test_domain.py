import pytest

from frozenlm.compare.domain import binary_tweets, shifted
from frozenlm.errors import ConfigError
from frozenlm.tasks import load_task


def test_binary_tweets_keeps_positive_and_negative_only() -> None:
    task = binary_tweets()
    assert set(task.spec.labels) == {"negative", "positive"}
    for split in (task.train, task.dev, task.test):
        assert split and {ex.label for ex in split} == {"negative", "positive"}
    assert "neutral" not in task.spec.instruction


def test_shifted_keeps_the_source_prompt_and_relabels_by_verbalizer() -> None:
    sentiment, tweets = load_task("sentiment"), binary_tweets()
    shift = shifted(sentiment, tweets)
    assert shift.spec == sentiment.spec and shift.train == sentiment.train
    assert [ex.fields for ex in shift.test] == [ex.fields for ex in tweets.test]
    expected = {"positive": "fresh", "negative": "rotten"}
    assert [ex.label for ex in shift.test] == [expected[ex.label] for ex in tweets.test]


def test_shift_between_unrelated_label_sets_is_refused() -> None:
    with pytest.raises(ConfigError, match="no label of 'sentiment'"):
        shifted(load_task("sentiment"), load_task("topic"))
