import pytest
import torch
import torch.nn.functional as F

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import Row, lay_out
from frozenlm.engine.loss import batch_loss, target_loss
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.engine.splice import pack, pack_after, splice

SHARED_TEXT = "You are a careful classifier. Answer with yes or no.\n\n"
INPUTS = ["Is the sky blue?", "Do fish fly over mountains at night?", "Two plus two?"]


def _rows(backbone: Backbone, soft: torch.Tensor) -> list[Row]:
    tokenizer = backbone.tokenizer
    texts = [SHARED_TEXT + q + "\nAnswer:" for q in INPUTS]
    return [Row(list(tokenizer(t, add_special_tokens=False)["input_ids"]), soft) for t in texts]


def test_target_loss_equals_full_logits_cross_entropy(tiny: Backbone) -> None:
    batch = splice(tiny, [[[5, 6, 7]], [[8, 9]]], targets=[[10, 11], [12]])
    hidden = tiny.forward(batch.embeds, batch.attention_mask, batch.position_ids)
    ours = target_loss(tiny, hidden, batch.labels)  # type: ignore[arg-type]
    logits = tiny.lm_logits(hidden)  # full logits, reference only
    reference = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1)
    )  # type: ignore[index]
    torch.testing.assert_close(ours, reference)


def test_a_shared_prompt_and_text_run_once_with_the_same_loss_and_gradients(tiny: Backbone) -> None:
    torch.manual_seed(0)
    prompt = torch.randn(4, tiny.hidden_size, requires_grad=True)
    prefixes = [[5, 6, 7, 8, 9], [5, 6, 7, 10], [5, 6, 7, 11, 12, 13]]  # share 5, 6, 7
    targets = [[20], [21, 22], [23]]
    shared = batch_loss(tiny, [Row(p, prompt) for p in prefixes], targets)
    (grad_shared,) = torch.autograd.grad(shared, prompt)

    rows = [[prompt, p] for p in prefixes]
    packed = pack(tiny, rows, targets)
    hidden = tiny.forward(packed.embeds, None, packed.position_ids)
    plain = target_loss(tiny, hidden, packed.labels)
    (grad_plain,) = torch.autograd.grad(plain, prompt)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_shared, grad_plain, atol=1e-5, rtol=1e-4)
    assert grad_plain.abs().sum() > 0


def test_the_loss_is_the_same_shared_packed_or_padded(tiny: Backbone) -> None:
    prompt = torch.randn(4, tiny.hidden_size, generator=torch.Generator().manual_seed(4))
    prompt.requires_grad_(True)
    rows = _rows(tiny, prompt)
    targets = [[11], [12, 13], [14]]
    shared = batch_loss(tiny, rows, targets)  # prompt + shared text once, rows after it
    copies = [Row(r.ids, prompt.clone()) for r in rows]  # distinct objects: packed
    packed = batch_loss(tiny, copies, targets)
    padded = splice(tiny, [[prompt, r.ids] for r in rows], targets)
    hidden = tiny.forward(padded.embeds, padded.attention_mask, padded.position_ids)
    assert padded.labels is not None
    logits = tiny.lm_logits(hidden[:, :-1])
    labels = padded.labels[:, 1:]
    reference = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(shared, prompt)
    assert grad.abs().sum() > 0  # the loss reaches the prompt through its shared keys and values


def _padded_after_prefix_loss(backbone: Backbone, rows: list[Row], targets: list[list[int]]):
    """The reference: the rows' own parts left-padded after their shared prefix."""
    layout = lay_out(backbone, rows, min_text=1, grad=True)
    assert layout.shared is not None
    batch = layout.shared.after(splice(backbone, layout.pieces, targets))
    cache = layout.shared.expand(backbone, len(rows))
    hidden = backbone.forward(batch.embeds, batch.attention_mask, batch.position_ids, cache)
    assert batch.labels is not None
    return target_loss(backbone, hidden, batch.labels)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("conditioning", ["soft", "kv"])
def test_rows_packed_after_a_shared_prefix_match_a_padded_batch(
    attention: str, conditioning: str
) -> None:
    backbone = Backbone.tiny()
    backbone.model.set_attn_implementation(attention)
    assert backbone.takes_block_mask
    weights = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(4))
    weights.requires_grad_(True)

    def rows() -> list[Row]:
        if conditioning == "soft":  # the prompt, then shared text, then rows of 3 lengths
            return _rows(backbone, weights)
        # a key/value prefix computed from the weights: a deep prompt's kind of conditioning
        kv = PrefixCache.compute(backbone, [weights], grad=True)
        return [Row(r.ids, None, kv) for r in _rows(backbone, weights)]

    targets = [[11], [12, 13], [14]]
    packed = batch_loss(backbone, rows(), targets)
    (grad_packed,) = torch.autograd.grad(packed, weights)
    padded = _padded_after_prefix_loss(backbone, rows(), targets)
    (grad_padded,) = torch.autograd.grad(padded, weights)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_packed, grad_padded, atol=1e-5, rtol=1e-4)
    assert grad_packed.abs().sum() > 0


def test_a_packed_row_sees_the_prefix_and_itself_only(tiny: Backbone) -> None:
    prefix = torch.tensor([[1, 1, 0]])  # the prefix's last column is padding
    packed = pack_after(tiny, [[[5, 6]], [[7]]], [[8], [9, 10]], prefix)
    mask = packed.attention_mask[0, 0].long().tolist()
    assert mask == [
        [1, 1, 0, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 1, 1, 0, 0, 0],  # row 1 ends with its target 8
        [1, 1, 0, 0, 0, 0, 1, 0, 0],  # row 2 starts: the prefix and itself
        [1, 1, 0, 0, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 0, 1, 1, 1],
    ]
    assert packed.position_ids.tolist() == [[2, 3, 4, 2, 3, 4]]  # after 2 real prefix columns
    assert packed.labels.tolist() == [[-100, -100, 8, -100, 9, 10]]


def test_rows_with_own_soft_tokens_after_shared_text_have_the_padded_loss(tiny: Backbone) -> None:
    g = torch.Generator().manual_seed(6)
    head = tiny.tokenizer.encode("Answer the question that follows.\n", add_special_tokens=False)
    tails = [tiny.tokenizer.encode(t, add_special_tokens=False) for t in ("Sky?", "Fish fly?")]
    softs = [torch.randn(2 + i, tiny.hidden_size, generator=g, requires_grad=True) for i in (0, 1)]
    rows = [Row(head + t, s, soft_at=len(head)) for t, s in zip(tails, softs, strict=True)]
    targets = [[11, 12], [13]]
    assert lay_out(tiny, rows, min_text=1).shared is not None  # the head runs once
    shared = batch_loss(tiny, rows, targets)
    padded = splice(tiny, [[head, s, t] for s, t in zip(softs, tails, strict=True)], targets)
    hidden = tiny.forward(padded.embeds, padded.attention_mask, padded.position_ids)
    assert padded.labels is not None
    reference = target_loss(tiny, hidden, padded.labels)
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(shared, softs)
    want = torch.autograd.grad(reference, softs)
    for got, expected in zip(grads, want, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
