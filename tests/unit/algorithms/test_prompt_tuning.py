"""FedPrompt / FedPTuning: virtual tokens in scoring and generation, init text, hand-computed
aggregation, the FedPTuning reference quirk."""

from __future__ import annotations

import pytest
import torch

from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.p_tuning import FedPTuning
from fedamole.algorithms.prompt_tuning import FedPrompt
from fedamole.algorithms.virtual_tokens import VirtualTokenLM
from fedamole.data.collate import encode_choices
from fedamole.data.prompts import soft_prompt_init_text
from fedamole.data.types import ClientData, Example
from fedamole.evaluation import generate_responses, score_choices
from fedamole.federated.messages import ClientMessage
from fedamole.models import load_model_and_tokenizer

SMALL_PTUNING = {"baselines.prompt_tokens": 3, "baselines.prompt_encoder_hidden": 8}


def _build(smoke, name, **overrides):
    cfg = smoke.replace(**{"federation.algorithm": name, **overrides})
    model, tokenizer = load_model_and_tokenizer(cfg.model.name, dtype="float32", device="cpu")
    algo = {"fedprompt": FedPrompt, "fedptuning": FedPTuning}[name](cfg)
    model = algo.prepare_model(model)
    algo.setup(model)
    return algo, model, tokenizer


def _perturb(model: VirtualTokenLM, seed: int = 0) -> None:
    """Move every prompt parameter away from its init, so the prompt matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.peft_model.prompt_encoder.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)


EXAMPLES = [
    Example("Is the sky blue? Answer:", "Yes", "qa", choices=("Yes", "No", "Maybe not")),
    Example("Pick one", "b", "qa", choices=("a", "b")),
    Example(
        "A much longer prompt, so the batch has left padding. Which?",
        "no",
        "qa",
        choices=("yes", "no"),
    ),
]


def test_fedprompt_virtual_tokens_are_the_init_text_with_bos(smoke):
    _, model, tokenizer = _build(smoke, "fedprompt")
    ids = tokenizer(soft_prompt_init_text("synthetic"))["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert model.num_virtual_tokens == len(ids)
    table = model.peft_model.prompt_encoder["default"].embedding.weight
    word = model.base.get_input_embeddings().weight[torch.tensor(ids)]
    torch.testing.assert_close(table, word)
    assert soft_prompt_init_text("snli") != soft_prompt_init_text("synthetic")


@pytest.mark.parametrize(("name", "overrides"), [("fedprompt", {}), ("fedptuning", SMALL_PTUNING)])
def test_choice_nlls_equal_peft_forward_on_each_sequence_alone(smoke, name, overrides):
    _, model, tokenizer = _build(smoke, name, **overrides)
    _perturb(model)
    scores = score_choices(model, tokenizer, EXAMPLES, batch_size=8, max_length=512)
    peft_model = model.peft_model
    peft_model.eval()
    for example, got in zip(EXAMPLES, scores, strict=True):
        for seq, nll in zip(encode_choices(example, tokenizer, 512), got, strict=True):
            ids = torch.tensor([seq["input_ids"]])
            with torch.no_grad():
                loss = peft_model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    labels=torch.tensor([seq["labels"]]),
                ).loss  # mean NLL over the labelled tokens, virtual tokens prepended by peft
            assert nll == pytest.approx(float(loss), abs=1e-5)


def test_padded_row_has_the_logits_of_the_row_alone(smoke):
    _, model, tokenizer = _build(smoke, "fedptuning", **SMALL_PTUNING)
    _perturb(model, seed=1)
    short, long = tokenizer("ab")["input_ids"], tokenizer("a longer row")["input_ids"]
    pad = len(long) - len(short)
    ids = torch.tensor([[tokenizer.pad_token_id] * pad + short, long])
    mask = (ids != tokenizer.pad_token_id).long()
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask).logits  # (2, T, V)
        alone = model(input_ids=torch.tensor([short])).logits  # (1, len(short), V)
    assert both.shape[:2] == ids.shape
    torch.testing.assert_close(both[0, pad:], alone[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="left-padded"):
        model(input_ids=ids, attention_mask=mask.flip(-1))


def test_batched_generation_equals_peft_generate_alone(smoke):
    _, model, tokenizer = _build(smoke, "fedprompt")
    _perturb(model, seed=2)
    prompts = [
        Example("Say something:", "x", "t"),
        Example("A longer prompt for padding:", "y", "t"),
    ]
    texts = generate_responses(
        model, tokenizer, prompts, batch_size=2, max_new_tokens=6, max_length=512
    )
    peft_model = model.peft_model
    for example, text in zip(prompts, texts, strict=True):
        ids = torch.tensor([tokenizer(example.prompt)["input_ids"]])
        with torch.no_grad():
            out = peft_model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        assert text == tokenizer.decode(new, skip_special_tokens=True)


def _messages(algo, values, counts=(10, 30, 20)):
    return {
        c: ClientMessage(
            1,
            c,
            {k: torch.full_like(v, val) for k, v in algo.global_params.items()},
            {"num_examples": n},
            {},
        )
        for c, (val, n) in enumerate(zip(values, counts, strict=True))
    }


@pytest.mark.parametrize(("weighting", "expected"), [("uniform", 2.0), ("examples", 13 / 6)])
def test_aggregation_is_the_hand_computed_mean(smoke, weighting, expected):
    algo, _, _ = _build(smoke, "fedptuning", **SMALL_PTUNING, **{"federation.weighting": weighting})
    assert {k.split(":", 1)[1].split(".")[0] for k in algo.global_params} == {
        "embedding",
        "mlp_head",
    }
    updates = _messages(algo, [1.0, 2.0, 3.0])
    summary = algo.aggregate(1, updates)
    assert summary.accepted == (0, 1, 2)
    for value in algo.global_params.values():  # (1*10 + 2*30 + 3*20) / 60 = 13/6 when weighted
        torch.testing.assert_close(value, torch.full_like(value, expected))


def test_nan_update_is_rejected(smoke):
    algo, _, _ = _build(smoke, "fedprompt")
    updates = _messages(algo, [1.0, float("nan"), 3.0])
    summary = algo.aggregate(2, updates)
    assert set(summary.rejected) == {1} and "NaN" in summary.rejected[1]
    for value in algo.global_params.values():
        torch.testing.assert_close(value, torch.full_like(value, 2.0))


def _ctx(model, tokenizer, client=0):
    ex = Example("Q: hello\nA:", "hi", "t", choices=("hi", "bye"))
    data = ClientData(train=(ex, ex), embedding=(), eval=(), test=(ex,))
    return ClientContext(client, data, model, tokenizer)


def test_quirk_averages_the_encoder_output_and_writes_it_into_the_input_table(smoke):
    quirk, model, tokenizer = _build(
        smoke, "fedptuning", **SMALL_PTUNING, **{"baselines.ptuning.reference_quirk": True}
    )
    encoder = model.peft_model.prompt_encoder["default"]
    tokens = torch.arange(model.num_virtual_tokens)
    with torch.no_grad():
        encoded = encoder.mlp_head(encoder.embedding.weight)  # MLP(E), what peft saves
    assert set(quirk.global_params) == {"prompt:embeddings"}
    torch.testing.assert_close(quirk.global_params["prompt:embeddings"], encoded)
    assert set(quirk.relay) == {f"prompt_mlp:{k}" for k in encoder.mlp_head.state_dict()}

    msgs = quirk.configure_round(1)
    assert any(k.startswith("prompt_mlp:") for k in msgs[0].tensors)  # client 0 restores the MLP
    assert not any(k.startswith("prompt_mlp:") for k in msgs[1].tensors)
    ctx = _ctx(model, tokenizer)
    reply = quirk.local_update(1, msgs[0], ctx)
    # client 0 is not the last: it uploads only the encoder output, MLP(E) of its trained encoder
    assert set(reply.tensors) == {"prompt:embeddings"}
    with torch.no_grad():
        torch.testing.assert_close(reply.tensors["prompt:embeddings"], encoder(tokens))
    trained = {k: v.clone() for k, v in encoder.mlp_head.state_dict().items()}
    # the next client writes the received prompt into E and keeps the shared MLP as it is ...
    quirk.local_update(1, _load_only(msgs[1]), _ctx(model, tokenizer, client=1))
    torch.testing.assert_close(encoder.embedding.weight.detach(), encoded)
    for k, v in encoder.mlp_head.state_dict().items():
        torch.testing.assert_close(v, trained[k])
    # ... while client 0, the first of a round, restores the relayed MLP (here: the initial one)
    quirk.local_update(1, _load_only(msgs[0]), ctx)
    for k, v in encoder.mlp_head.state_dict().items():
        torch.testing.assert_close(v, quirk.relay[f"prompt_mlp:{k}"])
        assert not torch.equal(v, trained[k])


def _load_only(msg):
    """The same message, with nothing to do but load what it carries."""
    off = {"train": False, "upload": False, "eval_received": False, "eval_personalized": False}
    return type(msg)(msg.round, msg.client, msg.tensors, {**msg.config, **off})


def test_quirk_flag_changes_what_travels_and_what_is_averaged(smoke):
    correct, model, tokenizer = _build(smoke, "fedptuning", **SMALL_PTUNING)
    reply = correct.local_update(1, correct.configure_round(1)[2], _ctx(model, tokenizer, 2))
    assert set(reply.tensors) == set(correct.global_params)  # embedding table and MLP
    assert reply.tensors["prompt:embedding.weight"].shape == (3, 32)

    quirk, model, tokenizer = _build(
        smoke, "fedptuning", **SMALL_PTUNING, **{"baselines.ptuning.reference_quirk": True}
    )
    msgs = quirk.configure_round(1)
    last = quirk.local_update(1, msgs[2], _ctx(model, tokenizer, 2))  # the last client
    mlp = {k for k in last.tensors if k.startswith("prompt_mlp:")}
    assert mlp == set(quirk.relay) and "prompt:embeddings" in last.tensors
    before = {k: v.clone() for k, v in quirk.relay.items()}
    updates = {
        c: ClientMessage(1, c, {"prompt:embeddings": torch.full((3, 32), float(c))}, {}, {})
        for c in (0, 1)
    }
    updates[2] = last
    quirk.aggregate(1, updates)
    expected = (0.0 + 1.0 + last.tensors["prompt:embeddings"]) / 3
    torch.testing.assert_close(quirk.global_params["prompt:embeddings"], expected)
    for key, value in quirk.relay.items():  # the MLP is relayed from the last client, not averaged
        torch.testing.assert_close(value, last.tensors[key])
        assert not torch.equal(value, before[key])


def test_state_dict_round_trip(smoke):
    algo, _, _ = _build(
        smoke, "fedptuning", **SMALL_PTUNING, **{"baselines.ptuning.reference_quirk": True}
    )
    algo.aggregate(1, _messages(algo, [1.0, 2.0, 3.0]))
    other = FedPTuning(algo.cfg)
    other.load_state_dict(algo.state_dict())
    assert other.global_params.keys() == algo.global_params.keys()
    assert other.relay.keys() == algo.relay.keys()
    for k, v in algo.global_params.items():
        torch.testing.assert_close(other.global_params[k], v)


@pytest.mark.parametrize(("name", "cls"), [("fedprompt", FedPrompt), ("fedptuning", FedPTuning)])
def test_registry(name, cls):
    from fedamole.algorithms import get_algorithm

    assert get_algorithm(name) is cls and cls.name == name
