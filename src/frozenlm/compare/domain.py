"""Domain shift (Lester et al. 2021, QQP <-> MRPC), on our data: movie reviews <-> tweets.

A method fitted on a source task is evaluated, unchanged and with the source's prompt, on the
test examples of a target task from another domain whose labels mean the same thing (matched by
verbalizer). `sentiment` (movie reviews) pairs with `tweets-binary` (tweets restricted to
positive/negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from frozenlm.errors import ConfigError
from frozenlm.tasks import Example, Task, load_task

BINARY_TWEETS = "tweets-binary"
SHIFTS = {"sentiment": BINARY_TWEETS, BINARY_TWEETS: "sentiment"}


def binary_tweets(seed: int = 0) -> Task:
    """`tweets` restricted to its negative and positive examples, asked as a two-way question."""
    tweets = load_task("tweets", seed=seed)
    keep = ("negative", "positive")
    spec = replace(
        tweets.spec,
        name=BINARY_TWEETS,
        instruction="Is the sentiment of this tweet negative or positive?",
        labels={k: v for k, v in tweets.spec.labels.items() if k in keep},
    )

    def only(split: Sequence[Example]) -> tuple[Example, ...]:
        return tuple(ex for ex in split if ex.label in keep)

    return Task(spec, only(tweets.train), only(tweets.dev), only(tweets.test))


def load_compare_task(ref: str, seed: int = 0) -> Task:
    """A task for compare: any task reference, plus the derived `tweets-binary` and the QA text
    tasks (`nq-closed`, `nq-open`: `frozenlm.qa.text_tasks`)."""
    from frozenlm.qa.nq import BUILTIN_QA
    from frozenlm.qa.text_tasks import load_text_task, parse_text_task

    if ref == BINARY_TWEETS:
        return binary_tweets(seed)
    if parse_text_task(ref, BUILTIN_QA) is not None:
        return load_text_task(ref, seed=seed)
    return load_task(ref, seed=seed)


def shifted(source: Task, target: Task) -> Task:
    """The source task (its prompt, labels and train split) over the target's test examples,
    each relabelled to the source label with the same verbalizer."""
    by_word = {word.strip().lower(): label for label, word in source.spec.labels.items()}
    mapping = {}
    for label, word in target.spec.labels.items():
        if word.strip().lower() not in by_word:
            raise ConfigError(
                f"cannot shift '{source.name}' to '{target.name}': no label of '{source.name}' "
                f"is verbalized as '{word}'"
            )
        mapping[label] = by_word[word.strip().lower()]
    test = tuple(replace(ex, label=mapping[ex.label]) for ex in target.test)
    return Task(source.spec, source.train, source.dev, test)
