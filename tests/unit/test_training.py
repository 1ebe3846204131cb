"""Local training: micro-batching (gradient accumulation) never changes what a step computes."""

from __future__ import annotations

import pytest
import torch

from fedamole.config import TrainConfig
from fedamole.data.collate import IGNORE_INDEX, Encoded, encode_train
from fedamole.data.types import Example
from fedamole.models import load_model_and_tokenizer
from fedamole.training import BatchStream, TrainResult, local_train

MODEL = "tiny:llama"
# Prompts and responses of different lengths: every example has its own number of response tokens,
# so micro-batches of any size carry unequal token counts (and sequence lengths, hence padding).
EXAMPLES = (
    Example("Q: hi\nA:", "yo", "t"),
    Example("Q: name a colour\nA:", "a deep shade of blue", "t"),
    Example("Q: 2+2\nA:", "4", "t"),
    Example("Q: a long question about nothing in particular\nA:", "no idea", "t"),
    Example("Q: spell cat\nA:", "c-a-t, cat", "t"),
)
BATCH = len(EXAMPLES)  # every step trains on the whole (reshuffled) data set
ATOL = 1e-6


def _fresh():
    """A fresh tiny model (seed 0, float32, every parameter trainable) and the encoded examples."""
    model, tokenizer = load_model_and_tokenizer(MODEL, dtype="float32", device="cpu")
    model.requires_grad_(True)
    return model, tokenizer, [encode_train(ex, tokenizer, max_length=64) for ex in EXAMPLES]


def _stream(encoded: list[Encoded]) -> BatchStream:
    return BatchStream(encoded, seed=0, client=0)


def _train(micro: int | None) -> tuple[dict[str, torch.Tensor], TrainResult]:
    """Three steps on every parameter of a fresh tiny model: the trained parameters, the result."""
    model, tokenizer, encoded = _fresh()
    # A large Adam eps (vs. gradients of about 1e-3..1) makes a step almost linear in the gradient
    # (about lr * g / eps) instead of about lr * sign(g): any reweighting of the micro-batches
    # shows in every weight, while float32 noise (other padding, summation order) stays ~1e-8.
    cfg = TrainConfig(steps=3, batch_size=BATCH, micro_batch_size=micro, lr=1e-2, adam_eps=1e-2)
    params = list(model.parameters())
    pad_id = tokenizer.pad_token_id
    result = local_train(model, params, _stream(encoded), cfg, lr=cfg.lr, pad_id=pad_id)
    return {k: v.detach().clone() for k, v in model.named_parameters()}, result


@pytest.fixture(scope="module")
def full_batch() -> tuple[dict[str, torch.Tensor], TrainResult]:
    return _train(None)


def test_full_batch_training_moves_every_weight_far_beyond_the_tolerance(full_batch):
    """Otherwise equal parameters below could just be the untouched init."""
    trained, result = full_batch
    init = dict(_fresh()[0].named_parameters())
    assert trained.keys() == init.keys()
    for key, value in trained.items():
        assert (value - init[key]).abs().max() > 100 * ATOL, key
    assert result.steps == 3 and result.tokens > 0


@pytest.mark.parametrize("micro", [1, 2, 3])
def test_micro_batches_give_the_full_batch_parameters(full_batch, micro):
    """Token-weighted accumulation: micro-batches of unequal token counts (and, for 2 and 3,
    unequal sizes: 2+2+1 and 3+2 examples) train the parameters of one full-batch pass."""
    _, _, encoded = _fresh()
    batch = _stream(encoded).take(BATCH)  # the first step's batch, in training order
    tokens = [sum(t != IGNORE_INDEX for t in ex["labels"][1:]) for ex in batch]
    per_micro = [sum(tokens[i : i + micro]) for i in range(0, BATCH, micro)]
    assert len(per_micro) > 1 and len(set(per_micro)) == len(per_micro)  # all unequal
    expected, expected_result = full_batch
    got, result = _train(micro)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=ATOL, msg=key)
    assert (result.tokens, result.steps) == (expected_result.tokens, expected_result.steps)
    assert result.loss == pytest.approx(expected_result.loss, rel=1e-5)


def test_logits_only_where_labels_are_train_like_full_logits(full_batch, monkeypatch):
    """The lm head runs on the trailing window that holds every label (logits_window); training
    with full logits instead (the window forced to the whole row) gives the same parameters."""
    import fedamole.training as training

    _, _, encoded = _fresh()
    labels = training.collate(_stream(encoded).take(BATCH), pad_id=0)["labels"]  # (B, T)
    window = training.logits_window(labels)
    assert window < labels.shape[1]  # the window really is shorter than the rows
    assert (labels[:, : labels.shape[1] - window + 1] == IGNORE_INDEX).all()  # and holds them all
    monkeypatch.setattr(training, "logits_window", lambda labels: labels.shape[1])
    got, result = _train(None)
    expected, expected_result = full_batch
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=ATOL, msg=key)
    assert result.loss == pytest.approx(expected_result.loss, rel=1e-5)


def test_logits_window_without_labels_is_the_whole_row():
    from fedamole.training import logits_window

    assert logits_window(torch.full((2, 5), IGNORE_INDEX)) == 5
    assert logits_window(torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7], [IGNORE_INDEX, 4, 5]])) == 3
    assert logits_window(torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7]])) == 2


def _train_frozen_head() -> tuple[dict[str, torch.Tensor], TrainResult]:
    """Three steps of a fresh tiny model whose embeddings and lm head are frozen (the adapter
    case: the head's input needs a gradient, its weight does not)."""
    model, _, encoded = _fresh()
    model.get_input_embeddings().requires_grad_(False)
    model.get_output_embeddings().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = TrainConfig(steps=3, batch_size=BATCH, lr=1e-2, adam_eps=1e-2)
    result = local_train(model, params, _stream(encoded), cfg, lr=cfg.lr, pad_id=0)
    return {k: v.detach().clone() for k, v in model.named_parameters()}, result


def test_the_cpu_fast_paths_train_like_the_plain_path(monkeypatch):
    """The lm head sees a contiguous copy of hidden[:, -K:] while training (one GEMM instead of
    one per row over an expanded weight) and attention runs as float32 products; without them
    (the path before) training gives the same parameters and losses to rounding."""
    import contextlib

    import fedamole.training as training

    seen: list[bool] = []
    model, _, encoded = _fresh()
    head = model.get_output_embeddings()
    # a forward hook sees the arguments as the pre-hooks left them
    handle = head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    model.get_input_embeddings().requires_grad_(False)
    head.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = TrainConfig(steps=1, batch_size=BATCH, lr=1e-2)
    local_train(model, params, _stream(encoded), cfg, lr=cfg.lr, pad_id=0)
    handle.remove()
    assert seen == [True]  # the head got a contiguous input
    assert not head._forward_pre_hooks  # and it is gone after training

    new, new_result = _train_frozen_head()
    monkeypatch.setattr(training, "contiguous_head_input", lambda model: contextlib.nullcontext())
    monkeypatch.setattr(training, "training_attention", lambda model: contextlib.nullcontext())
    old, old_result = _train_frozen_head()
    init = dict(_fresh()[0].named_parameters())
    moved = [k for k in new if (new[k] - init[k]).abs().max() > 100 * ATOL]
    assert len(moved) > len(new) // 2  # training really moved the weights compared below
    for key in new:
        torch.testing.assert_close(new[key], old[key], rtol=0, atol=ATOL, msg=key)
    assert new_result.step_losses == pytest.approx(old_result.step_losses, rel=1e-6)
