import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.prefix_cache import PrefixCache, common_prefix_length


def _ids(backbone: Backbone, text: str) -> list[int]:
    return list(backbone.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_common_prefix_leaves_every_row_a_token() -> None:
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3]]) == 0
    assert common_prefix_length([[7, 2], [1, 2]]) == 0


def test_a_prefix_computed_after_another_equals_the_two_computed_at_once(tiny: Backbone) -> None:
    first, second = _ids(tiny, "System: be brief."), _ids(tiny, " User: hello there")
    joined = PrefixCache.compute(tiny, [first + second])
    chained = PrefixCache.compute(tiny, [second], after=PrefixCache.compute(tiny, [first]))
    assert chained.length == joined.length == len(first) + len(second)
    assert chained.mask is None
    for a, b in zip(chained.keys + chained.values, joined.keys + joined.values, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_stacked_prefixes_are_left_padded_and_masked(tiny: Backbone) -> None:
    short = PrefixCache.compute(tiny, [_ids(tiny, "Hi")])
    long = PrefixCache.compute(tiny, [_ids(tiny, "A much longer prefix than the other")])
    stacked = PrefixCache.stack([short, long, short])
    assert stacked.rows == 3 and stacked.length == long.length
    assert stacked.mask is not None
    assert stacked.mask.sum(dim=1).tolist() == [short.length, long.length, short.length]
    assert stacked.mask[0, : long.length - short.length].sum() == 0  # padding on the left
    torch.testing.assert_close(stacked.keys[0][1], long.keys[0][0])
    torch.testing.assert_close(stacked.keys[0][0, :, -short.length :], short.keys[0][0])
