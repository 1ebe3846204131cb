"""RSEA statistics against a direct computation from separately captured inputs
(docs/algorithm.md#client-statistics)."""

from __future__ import annotations

import pytest
import torch

from fedamole.models import tiny_causal_lm
from fedamole.mole import embedding_stats, inject_mole, mole_modules


@pytest.fixture
def model(cfg, randomize):
    model = tiny_causal_lm("qwen2")
    cfg = cfg.model_copy(update={"dropout": 0.5})  # must be switched off by eval mode
    inject_mole(model, cfg, generator=torch.Generator(), num_experts_held=3)
    randomize(model)
    return model


def batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for batch, seq, pad in [(2, 6, 2), (3, 4, 1), (1, 5, 0)]:
        ids = torch.randint(3, 259, (batch, seq), generator=gen)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, :pad] = 0  # left padding on the first row
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids})
    return out


def test_embedding_stats_equal_a_direct_computation(model):
    modules = mole_modules(model)
    captured = {name: [] for name in modules}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: captured[name].append(args[0]))
        for name, m in modules.items()
    ]
    model.eval()
    with torch.no_grad():
        for batch in batches():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()
    model.train()
    masks = [b["attention_mask"].reshape(-1).bool() for b in batches()]

    stats = embedding_stats(model, batches())

    assert model.training  # mode restored
    assert list(stats) == list(modules)
    for name, module in modules.items():
        tokens = torch.cat(
            [x.reshape(-1, x.shape[-1])[m] for x, m in zip(captured[name], masks, strict=True)]
        )
        assert stats[name].num_tokens == tokens.shape[0] == sum(int(m.sum()) for m in masks)
        with torch.no_grad():
            token_emb = tokens @ module.token_proj.weight.T  # (T, r), one embedding per token
            expert_emb = torch.einsum("td,nrd->tnr", tokens, module.lora_A)  # (T, n, r)
        torch.testing.assert_close(stats[name].token, token_emb.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats[name].experts, expert_emb.mean(0), rtol=1e-5, atol=1e-6)
        assert stats[name].expert_ids.tolist() == module.expert_ids.tolist()
        assert not stats[name].token.requires_grad


def test_embedding_stats_are_deterministic_and_leave_no_hooks(model):
    first = embedding_stats(model, batches())
    second = embedding_stats(model, batches())  # eval mode: no dropout, same numbers
    for name in first:
        torch.testing.assert_close(first[name].experts, second[name].experts, rtol=0, atol=0)
    # A hook left behind would still hold the last batch's (1, 5) mask and reject this shape.
    model(input_ids=torch.randint(3, 259, (2, 3)))


def test_padding_does_not_count(model):
    ids = torch.randint(3, 259, (1, 4))
    padded = {
        "input_ids": torch.cat([torch.full((1, 3), 2), ids], 1),
        "attention_mask": torch.tensor([[0, 0, 0, 1, 1, 1, 1]]),
    }
    stats = embedding_stats(model, [padded])
    assert all(s.num_tokens == 4 for s in stats.values())


def test_embedding_stats_errors(model):
    with pytest.raises(ValueError, match="saw no token"):
        embedding_stats(model, [])
    with pytest.raises(ValueError, match="no MoLE layers"):
        embedding_stats(tiny_causal_lm(), batches())


def test_example_stats_are_each_examples_own_statistics(model):
    """Per-example rows equal the mean statistics of that example alone, padding excluded."""
    from fedamole.mole import example_embedding_stats

    model.train()  # dropout 0.5: must be off while the rows are computed
    rows = example_embedding_stats(model, batches())
    assert model.training  # mode restored
    model.eval()
    singles = []
    for batch in batches():
        for i in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][i].bool()
            ids = batch["input_ids"][i][keep][None]  # (1, S_i) without its padding
            singles.append(embedding_stats(model, [{"input_ids": ids}]))
    for name, st in rows.items():
        assert st.token.shape[0] == st.experts.shape[0] == len(singles) == 6
        for i, single in enumerate(singles):
            torch.testing.assert_close(
                st.token[i].float(), single[name].token, rtol=1e-4, atol=1e-5
            )
            torch.testing.assert_close(
                st.experts[i].float(), single[name].experts, rtol=1e-4, atol=1e-5
            )
