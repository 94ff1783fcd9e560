import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.loss import target_loss
from frozenlm.engine.splice import IGNORE_INDEX, pack, splice, splice_continuation


def test_left_padding_masks_and_positions(tiny: Backbone) -> None:
    batch = splice(tiny, [[[5, 6, 7]], [[8]]])
    assert batch.embeds.shape == (2, 3, tiny.hidden_size)
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch.lengths.tolist() == [3, 1]
    torch.testing.assert_close(batch.embeds[1, 2], tiny.embed(torch.tensor([8]))[0])


def test_soft_tokens_sit_where_their_piece_is(tiny: Backbone) -> None:
    soft = torch.randn(2, tiny.hidden_size)
    batch = splice(tiny, [[soft, [5, 6]], [[7]]])
    assert batch.embeds.shape[1] == 4
    torch.testing.assert_close(batch.embeds[0, :2], soft)
    torch.testing.assert_close(batch.embeds[0, 2:], tiny.embed(torch.tensor([5, 6])))
    assert batch.attention_mask[1].tolist() == [0, 0, 0, 1]


def test_gradients_reach_soft_tokens_only(tiny: Backbone) -> None:
    soft = torch.randn(3, tiny.hidden_size, requires_grad=True)
    batch = splice(tiny, [[soft, [5, 6]]])
    hidden = tiny.forward(batch.embeds, batch.attention_mask, batch.position_ids)
    hidden.sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.model.parameters())


def test_labels_cover_target_tokens_only(tiny: Backbone) -> None:
    batch = splice(tiny, [[[5, 6, 7]], [[8]]], targets=[[9], [10, 11]])
    assert batch.labels is not None
    assert batch.labels.tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9],
        [IGNORE_INDEX, IGNORE_INDEX, 10, 11],
    ]


def test_rows_of_different_soft_lengths_match_single_rows(tiny: Backbone) -> None:
    torch.manual_seed(0)
    rows = [
        [torch.randn(4, tiny.hidden_size), [11, 12, 13]],
        [torch.randn(1, tiny.hidden_size), [14, 15, 16, 17, 18]],
        [[19, 20]],
    ]
    mixed = splice(tiny, rows)
    hidden = tiny.forward(mixed.embeds, mixed.attention_mask, mixed.position_ids)
    for b, row in enumerate(rows):
        alone = splice(tiny, [row])
        ref = tiny.forward(alone.embeds, alone.attention_mask, alone.position_ids)
        torch.testing.assert_close(hidden[b, -1], ref[0, -1], atol=1e-5, rtol=1e-5)


def test_continuation_carries_positions_and_mask(tiny: Backbone) -> None:
    past = splice(tiny, [[[5, 6, 7]], [[8]]])
    cont = splice_continuation(tiny, past, [1, 0, 1], [[1, 2], [3], [4]])
    assert cont.position_ids.tolist() == [[1, 2], [3, 4], [1, 2]]
    assert cont.attention_mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 1, 1, 0]]


def test_wrong_width_soft_tokens_are_refused(tiny: Backbone) -> None:
    with pytest.raises(ValueError, match="soft tokens must be"):
        splice(tiny, [[torch.randn(2, tiny.hidden_size + 1)]])


def test_a_flat_id_list_is_not_a_row(tiny: Backbone) -> None:
    with pytest.raises(TypeError, match="list of pieces"):
        splice(tiny, [[5, 6]])  # type: ignore[list-item]


def test_pack_puts_short_rows_together_with_restarting_positions(tiny: Backbone) -> None:
    soft = torch.randn(2, tiny.hidden_size)
    packed = pack(tiny, [[soft, [5, 6]], [[7]], [[8]]], targets=[[9], [10, 11], [12]])
    assert packed.embeds.shape == (2, 5, tiny.hidden_size)  # capacity = longest row (5)
    assert packed.lengths.tolist() == [5, 3, 2]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    ignore = IGNORE_INDEX
    assert packed.labels.tolist() == [
        [ignore, ignore, ignore, ignore, 9],
        [ignore, 10, 11, ignore, 12],
    ]
    torch.testing.assert_close(packed.embeds[0, :2], soft)


def test_a_bin_tail_is_a_separate_dummy_segment(tiny: Backbone) -> None:
    packed = pack(tiny, [[[5, 6, 7, 8]], [[9]]], targets=[[10], [11]])
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]]
    assert packed.labels[1].tolist() == [IGNORE_INDEX, 11, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]


def test_packed_loss_and_gradients_equal_padded_ones(tiny: Backbone) -> None:
    torch.manual_seed(0)
    soft = [torch.randn(n, tiny.hidden_size, requires_grad=True) for n in (4, 1, 3)]
    prefixes = [[11, 12, 13], [14, 15, 16, 17, 18, 19, 20], [21], [22, 23]]
    targets = [[30], [31, 32], [33], [34]]
    soft.append(torch.randn(2, tiny.hidden_size, requires_grad=True))
    rows = [[s, p] for s, p in zip(soft, prefixes, strict=True)]

    padded = splice(tiny, rows, targets)
    assert padded.labels is not None
    hidden = tiny.forward(padded.embeds, padded.attention_mask, padded.position_ids)
    loss_padded = target_loss(tiny, hidden, padded.labels)
    grads_padded = torch.autograd.grad(loss_padded, soft)

    packed = pack(tiny, rows, targets)
    assert packed.embeds.shape[0] == 3  # rows 3 and 4 share a bin
    hidden = tiny.forward(packed.embeds, None, packed.position_ids)
    loss_packed = target_loss(tiny, hidden, packed.labels)
    grads_packed = torch.autograd.grad(loss_packed, soft)

    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads_packed, grads_padded, strict=True):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
