"""Tests of fedamole.evaluation: ROUGE-L parity, choice scoring, greedy generation, summaries."""

from __future__ import annotations

import math
import random
from typing import get_args

import pytest
import torch
from rouge import Rouge
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from fedamole._rouge import ROUGE_IMPLS
from fedamole.analysis.summaries import summarize_clients, summarize_rounds
from fedamole.config import EvalConfig
from fedamole.data.types import Example
from fedamole.evaluation import (
    choice_correct,
    evaluate_examples,
    generate_responses,
    mean_loss,
    rouge_l,
    score_choices,
)
from fedamole.models import tiny_causal_lm, tiny_config, tiny_tokenizer

# --------------------------------------------------------------------------------------------------
# ROUGE-L

_PACKAGE = Rouge(metrics=["rouge-l"])

TRICKY_PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "a dog lay on a rug"),
    ("The Cat", "the cat"),  # case-sensitive
    ("cat the", "the cat"),  # the tie-break picks which word enters the union
    ("a b c d", "d c b a"),
    ("the the the the", "the"),  # exclusive (set) counting
    ("the", "the the the the"),
    ("a b a b a b", "b a b a"),
    ("w1 w2 w6 w7 w8. w1 w3 w8 w9 w5", "w1 w2 w3 w4 w5"),  # union LCS across sentences
    ("First sentence. Second one. Third!", "First one. Second sentence."),
    ("no dots here at all", "one. two. three. four"),
    ("trailing dot.", "trailing dot"),
    ("trailing dots...", "trailing dots"),
    (".leading dot", "leading dot."),
    ("multiple   spaces\tand\ttabs", "multiple spaces and tabs"),
    ("new\nlines\n\nhere", "new lines here"),
    ("a. . b", "a. . c"),  # whitespace-only sentences become the empty-string token
    ("x . y", "x. .y"),
    ("!!! ???", "!!! ,,,"),  # punctuation only, but words
    (",", ";"),
    ("héllo wörld ünïcode", "héllo world ünïcode"),
    ("日本語 の テキスト", "日本語 テキスト"),
    ("emoji 🙂 test", "🙂 emoji"),
    ("3.14 is pi", "pi is 3.14"),  # the '.' inside a number splits it
    ("e.g. i.e. etc.", "e.g. etc."),
    ("a b c. a b c. a b c", "a b c"),
    ("a b c", "a b c. a b c. a b c"),
    ("The answer is Yes", "Yes"),
    ("\u00a0non\u00a0breaking\u2003space", "non breaking space"),
    ("one two three four five six seven eight nine ten", "two four six eight ten"),
]


@pytest.mark.parametrize(("hypothesis", "reference"), TRICKY_PAIRS)
def test_rouge_matches_the_rouge_package(hypothesis, reference):
    expected = _PACKAGE.get_scores(hypothesis, reference)[0]["rouge-l"]["f"]
    assert rouge_l(hypothesis, reference) == pytest.approx(expected, abs=1e-9)


def test_rouge_matches_the_rouge_package_on_random_pairs():
    rng = random.Random(0)
    pieces = ["a", "b", "c", "A", "é", "the", ".", ". ", "  ", "\n", ",", "...", " . "]
    checked = 0
    for _ in range(2000):
        hyp, ref = (
            "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(1, 14)))
            for _ in range(2)
        )
        if not any(w.strip(". ") for w in hyp.split()) or not any(
            w.strip(". ") for w in ref.split()
        ):
            continue  # wordless texts: see test_wordless_texts_score_zero
        expected = _PACKAGE.get_scores(hyp, ref)[0]["rouge-l"]["f"]
        assert rouge_l(hyp, ref) == pytest.approx(expected, abs=1e-9), (hyp, ref)
        checked += 1
    assert checked > 1000


def test_perfect_match_keeps_the_package_epsilon():
    assert rouge_l("a b", "a b") == pytest.approx(1 / (1 + 5e-9), abs=1e-15)
    assert rouge_l("a b", "a b") < 1.0


@pytest.mark.parametrize("empty", ["", " ", "\n\t ", ".", "...", " . . "])
def test_wordless_texts_score_zero(empty):
    for impl in ("rouge", "rouge-score"):
        assert rouge_l(empty, "a reference. . b", impl=impl) == 0.0
        assert rouge_l("a hypothesis. . b", empty, impl=impl) == 0.0


def test_the_package_raises_on_empty_and_scores_wordless_quirkily():
    with pytest.raises(ValueError):
        _PACKAGE.get_scores("", "a")
    # ". ." is one empty sentence, whose "" token matches the reference's: the package gives 0.5.
    assert _PACKAGE.get_scores(". .", "a. . b")[0]["rouge-l"]["f"] == pytest.approx(0.5, abs=1e-6)
    assert rouge_l(". .", "a. . b") == 0.0


def test_long_sentences_do_not_recurse():
    words = [f"w{i % 97}" for i in range(1200)]
    assert 0.0 < rouge_l(" ".join(words), " ".join(reversed(words))) <= 1.0


def test_rouge_score_impl_is_google_rougeL_without_stemmer():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for hyp, ref in [("The Cats run.", "the cat runs"), ("a b. c d", "a c. b d")]:
        expected = scorer.score(ref, hyp)["rougeL"].fmeasure
        assert rouge_l(hyp, ref, impl="rouge-score") == pytest.approx(expected, abs=1e-12)
    assert rouge_l("The Cat", "the cat", impl="rouge-score") == pytest.approx(1.0)
    assert rouge_l("The Cat", "the cat", impl="rouge") == 0.0


def test_rouge_impls_match_the_config_literal():
    assert set(ROUGE_IMPLS) == set(get_args(EvalConfig.model_fields["rouge_impl"].annotation))
    with pytest.raises(ValueError, match="impl"):
        rouge_l("a", "a", impl="bleu")


# --------------------------------------------------------------------------------------------------
# Models


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _model(arch="llama", seed=0):
    """A tiny float32 LM; ``gpt2`` has learned absolute positions, so left padding without the right
    position ids changes its scores (RoPE models are shift-invariant up to rounding)."""
    if arch != "gpt2":
        return tiny_causal_lm(arch, seed=seed).float()
    cfg = GPT2Config(
        vocab_size=259,
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg).eval()


CHOICES = ("Yes", "Maybe", "No")
CHOICE_EXAMPLES = [
    Example(prompt=f"Suppose {p} Can we infer that {h}?\n", response=r, category=r, choices=CHOICES)
    for p, h, r in [
        ("a", "b", "Yes"),
        ("the dog runs in a park.", "an animal moves", "Maybe"),
        ("x", "a much longer hypothesis with many words", "No"),
        ("it rains all day long in the city.", "it is wet", "No"),
        ("q", "r", "Yes"),
    ]
]
TEXT_EXAMPLES = [
    Example(prompt=p, response=r, category="qa")
    for p, r in [
        ("Q: name a color\nA: ", "blue"),
        ("Tell me a short story about a cat that lives in a house.\n", "Once upon a time."),
        ("Hi", "Hello there"),
    ]
]


def _direct_nll(model, tokenizer, prompt: str, target: str) -> float:
    """Mean NLL of target + EOS after prompt, one unpadded sequence, full logits."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = [*tokenizer(target, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logp = model(ids).logits[0].log_softmax(-1)  # (T, V)
    start = len(prompt_ids) - 1
    picked = [logp[start + k, t] for k, t in enumerate(target_ids)]
    return -float(sum(picked)) / len(target_ids)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_left_padded_choice_scores_equal_unpadded(arch, tokenizer):
    model = _model(arch)
    batched = score_choices(model, tokenizer, CHOICE_EXAMPLES, batch_size=4, max_length=128)
    for example, scores in zip(CHOICE_EXAMPLES, batched, strict=True):
        direct = [_direct_nll(model, tokenizer, example.prompt, c) for c in example.choices]
        assert scores == pytest.approx(direct, abs=1e-5)


def test_choice_correct_is_the_argmin_of_the_direct_nll(tokenizer):
    model = _model(seed=3)
    got = choice_correct(model, tokenizer, CHOICE_EXAMPLES, batch_size=2, max_length=128)
    expected = []
    for example in CHOICE_EXAMPLES:
        nll = [_direct_nll(model, tokenizer, example.prompt, c) for c in example.choices]
        expected.append(example.choices[nll.index(min(nll))] == example.response)
    assert got == expected


def _biased_model(tokenizer, bias: dict[str, float]):
    """A model whose next-token distribution is softmax(bias), whatever the input."""
    model = _model()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for token, value in bias.items():
            head.bias[tokenizer.convert_tokens_to_ids(token)] = value
    model.set_output_embeddings(head)
    return model


def test_biased_model_gives_predictable_metrics(tokenizer):
    bias = {"</s>": 10.0, "N": 9.0, "o": 9.0}
    model = _biased_model(tokenizer, bias)
    cfg = EvalConfig(batch_size=2, max_new_tokens=5)
    out = evaluate_examples(model, tokenizer, CHOICE_EXAMPLES + TEXT_EXAMPLES, cfg, max_length=128)
    # "No" is always predicted (2 of 5 correct); EOS comes first, so every hypothesis is empty.
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["rouge_l"] == 0.0
    assert out["score"] == pytest.approx(2 / 8)
    assert (out["num_examples"], out["num_skipped"]) == (8, 0)
    logits = torch.zeros(model.config.vocab_size)
    for token, value in bias.items():
        logits[tokenizer.convert_tokens_to_ids(token)] = value
    nll = torch.logsumexp(logits, 0) - logits  # (V,) the same at every position
    targets = [
        tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [1]
        for ex in CHOICE_EXAMPLES + TEXT_EXAMPLES
    ]
    expected = sum(float(nll[t]) for ids in targets for t in ids) / sum(map(len, targets))
    assert out["loss"] == pytest.approx(expected, abs=1e-5)


def test_mean_loss_is_token_weighted(tokenizer):
    model = _model(seed=1)
    got = mean_loss(model, tokenizer, TEXT_EXAMPLES, batch_size=2, max_length=128)
    total = count = 0.0
    for ex in TEXT_EXAMPLES:
        n = len(tokenizer(ex.response, add_special_tokens=False)["input_ids"]) + 1
        total += _direct_nll(model, tokenizer, ex.prompt, ex.response) * n
        count += n
    assert got == pytest.approx(total / count, abs=1e-5)
    per_example_mean = sum(
        _direct_nll(model, tokenizer, e.prompt, e.response) for e in TEXT_EXAMPLES
    )
    assert got != pytest.approx(per_example_mean / len(TEXT_EXAMPLES), abs=1e-4)


def _naive_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, list[int]]:
    """Token-by-token argmax without cache or padding, stopping at EOS."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True), new


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_generation_equals_unbatched_and_naive(arch, tokenizer):
    model = _model(arch, seed=2)
    kw = dict(max_new_tokens=12, max_length=128)
    batched = generate_responses(model, tokenizer, TEXT_EXAMPLES, batch_size=3, **kw)
    single = generate_responses(model, tokenizer, TEXT_EXAMPLES, batch_size=1, **kw)
    naive = [_naive_greedy(model, tokenizer, ex.prompt, 12)[0] for ex in TEXT_EXAMPLES]
    assert batched == single == naive
    assert all(len(text) > 0 for text in naive)


def test_generation_stops_at_eos_per_sequence(tokenizer):
    model = _model(seed=2)
    _, tokens = _naive_greedy(model, tokenizer, TEXT_EXAMPLES[0].prompt, 12)
    step = 3
    stop = tokens[step]
    assert stop not in tokens[:step]
    # Swap the output rows of EOS and of the token generated at `step`: EOS now comes there.
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[[stop, tokenizer.eos_token_id]] = head[[tokenizer.eos_token_id, stop]]
    texts = generate_responses(
        model, tokenizer, TEXT_EXAMPLES, batch_size=3, max_new_tokens=12, max_length=128
    )
    assert texts[0] == tokenizer.decode(tokens[:step], skip_special_tokens=True)
    assert texts == [_naive_greedy(model, tokenizer, ex.prompt, 12)[0] for ex in TEXT_EXAMPLES]
    assert len(texts[1]) > len(texts[0])  # the other sequences go on


def test_generation_ignores_the_models_generation_config(tokenizer):
    model = _model(seed=2)
    expected, tokens = _naive_greedy(model, tokenizer, TEXT_EXAMPLES[0].prompt, 8)
    model.generation_config.suppress_tokens = [tokens[0]]
    model.generation_config.repetition_penalty = 5.0
    original = model.generation_config
    got = generate_responses(
        model, tokenizer, TEXT_EXAMPLES[:1], batch_size=1, max_new_tokens=8, max_length=128
    )
    assert got == [expected]
    assert model.generation_config is original


def test_too_long_prompts_are_skipped_and_counted(tokenizer):
    model = _model()
    long_choice = Example(prompt="x" * 60, response="Yes", category="c", choices=CHOICES)
    long_text = Example(prompt="y" * 60, response="z", category="c")
    examples = [CHOICE_EXAMPLES[0], long_choice, TEXT_EXAMPLES[2], long_text]
    kw = dict(batch_size=2, max_length=40)
    assert score_choices(model, tokenizer, examples[:2], **kw)[1] is None
    assert generate_responses(model, tokenizer, examples[2:], max_new_tokens=3, **kw)[1] is None
    out = evaluate_examples(model, tokenizer, examples, EvalConfig(max_new_tokens=3), max_length=40)
    assert (out["num_examples"], out["num_skipped"]) == (2, 2)
    assert set(out) == {"num_examples", "num_skipped", "accuracy", "rouge_l", "score", "loss"}


def test_absent_kinds_have_no_key_and_mode_is_restored(tokenizer):
    model = _model()
    model.train()
    out = evaluate_examples(model, tokenizer, CHOICE_EXAMPLES, EvalConfig(), max_length=128)
    assert model.training
    assert "rouge_l" not in out and 0.0 <= out["accuracy"] <= 1.0
    assert out["score"] == out["accuracy"]
    model.eval()
    out = evaluate_examples(
        model, tokenizer, TEXT_EXAMPLES, EvalConfig(max_new_tokens=4), max_length=128
    )
    assert not model.training
    assert "accuracy" not in out and 0.0 <= out["rouge_l"] <= 1.0


def test_scoring_runs_in_eval_mode_without_dropout(tokenizer):
    cfg = tiny_config("llama")
    cfg.attention_dropout = 0.5
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).float().train()
    kw = dict(batch_size=2, max_length=128)
    first = score_choices(model, tokenizer, CHOICE_EXAMPLES, **kw)
    assert model.training
    assert score_choices(model, tokenizer, CHOICE_EXAMPLES, **kw) == first
    direct = [_direct_nll(model.eval(), tokenizer, CHOICE_EXAMPLES[0].prompt, c) for c in CHOICES]
    assert first[0] == pytest.approx(direct, abs=1e-5)


def test_bad_choice_examples_raise(tokenizer):
    model = _model()
    bad = Example(prompt="p", response="Perhaps", category="c", choices=CHOICES)
    with pytest.raises(ValueError, match="not among its choices"):
        choice_correct(model, tokenizer, [bad], batch_size=1, max_length=64)
    with pytest.raises(ValueError, match="choices"):
        score_choices(model, tokenizer, TEXT_EXAMPLES, batch_size=1, max_length=64)


# --------------------------------------------------------------------------------------------------
# Summaries


def test_summarize_clients_hand_computed():
    per_client = {
        0: {"accuracy": 0.5, "loss": 2.0, "num_examples": 10, "num_skipped": 1},
        1: {"accuracy": 1.0, "loss": 1.0, "num_examples": 30, "num_skipped": 0},
        2: {"accuracy": 0.0, "loss": 3.0, "num_examples": 10, "num_skipped": 0},
    }
    out = summarize_clients(per_client)
    assert set(out) == {"accuracy", "loss"}
    acc = out["accuracy"]
    assert acc["mean"] == pytest.approx(0.5)
    assert acc["weighted_mean"] == pytest.approx((5 + 30 + 0) / 50)
    assert acc["worst"] == 0.0
    assert acc["std"] == pytest.approx(math.sqrt((0 + 0.25 + 0.25) / 3))
    assert out["loss"]["worst"] == 3.0
    weighted = summarize_clients(per_client, weights={0: 1, 1: 0, 2: 1})
    assert weighted["accuracy"]["weighted_mean"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="client 2"):
        summarize_clients(per_client, weights={0: 1, 1: 1})


def test_summarize_clients_uses_only_clients_reporting_a_metric():
    out = summarize_clients({0: {"rouge_l": 0.2, "num_examples": 1}, 1: {"num_examples": 5}})
    assert out["rouge_l"] == {"mean": 0.2, "weighted_mean": 0.2, "worst": 0.2, "std": 0.0}


def test_summarize_rounds():
    values = {1: 0.3, 2: 0.7, 3: 0.7, 4: 0.5}
    assert summarize_rounds(values, "best") == (2, 0.7)
    assert summarize_rounds(values, "last") == (4, 0.5)
    assert summarize_rounds({5: 0.1, 0: 0.2}, "last") == (5, 0.1)
    with pytest.raises(ValueError, match="empty"):
        summarize_rounds({}, "best")
    with pytest.raises(ValueError, match="mode"):
        summarize_rounds(values, "mean")


# --------------------------------------------------------------------------------------------------
# Shared prefix (one pass over the template, rows continued from its cache)

TEMPLATE = "Below is an instruction that describes a task.\n### Instruction:\n{}\n### Response:\n"
TEMPLATED = [
    Example(prompt=TEMPLATE.format(q), response=r, category="qa")
    for q, r in [("name a color", "blue"), ("say hi to the cat", "Hello cat"), ("count", "1 2 3")]
] + [
    Example(prompt=TEMPLATE.format(f"Is {q} true?"), response=r, category="yn", choices=CHOICES)
    for q, r in [("it", "Yes"), ("the long claim about a dog", "No"), ("x", "Maybe")]
]


def _without_prefix_sharing(model):
    model.supports_prefix_cache = False  # whole rows, and `generate` (the pre-cache code path)
    return model


def test_prefix_groups_share_runs_within_limits():
    from fedamole.inference import prefix_groups

    # Two templates: rows 0-2 share 4 tokens, rows 3-4 share 3; row 2 may share only 2.
    rows = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7, 8], [1, 2, 3, 4, 9], [5, 6, 7, 1], [5, 6, 7, 2]]
    assert prefix_groups(rows, [9, 9, 9, 9, 9]) == ([0, 0, 0, 1, 1], [4, 3])
    group, prefixes = prefix_groups(rows, [9, 9, 2, 9, 9])
    assert [prefixes[g] for g in group][:2] == [4, 4] or [prefixes[g] for g in group][:3] == [2] * 3
    for g, p in zip(group, [prefixes[g] for g in group], strict=True):
        members = [r for r, h in zip(rows, group, strict=True) if h == g]
        assert all(m[:p] == members[0][:p] for m in members)  # a real common prefix
    assert prefix_groups([[1, 2], [3, 4]], [9, 9]) == ([0, 1], [0, 0])  # nothing shared
    assert prefix_groups([[1, 2, 3]], [9]) == ([0], [0])  # one row: nothing to share
    assert prefix_groups([], []) == ([], [])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_shared_prefix_scores_and_generates_like_whole_rows(arch, tokenizer, monkeypatch):
    import fedamole.inference as evaluation

    used = []
    original = evaluation.prefix_groups
    monkeypatch.setattr(
        evaluation, "prefix_groups", lambda *a: used.append(max(original(*a)[1])) or original(*a)
    )
    model = _model(arch, seed=4)
    text = [ex for ex in TEMPLATED if not ex.is_choice] + TEXT_EXAMPLES  # two kinds of prompt
    choice = [ex for ex in TEMPLATED if ex.is_choice]
    kw = dict(batch_size=3, max_length=128)

    def run():
        return (
            score_choices(model, tokenizer, choice, **kw),
            mean_loss(model, tokenizer, TEMPLATED, **kw),
            generate_responses(model, tokenizer, text, max_new_tokens=8, **kw),
            evaluate_examples(model, tokenizer, text, EvalConfig(max_new_tokens=8), max_length=128),
        )

    shared = run()
    assert used and max(used) > 10  # the template was shared
    _without_prefix_sharing(model)
    whole = run()
    for got, want in zip(shared[0], whole[0], strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert shared[1] == pytest.approx(whole[1], rel=1e-5)
    assert shared[2] == whole[2]
    assert shared[3] == pytest.approx(whole[3], rel=1e-5)
    if arch != "gpt2":
        assert shared[2] == [_naive_greedy(model, tokenizer, ex.prompt, 8)[0] for ex in text]


def test_test_loss_reuses_the_correct_choice_and_equals_mean_loss(tokenizer):
    model = _model(seed=5)
    cfg = EvalConfig(batch_size=4, max_new_tokens=4)
    out = evaluate_examples(model, tokenizer, TEMPLATED + CHOICE_EXAMPLES, cfg, max_length=128)
    expected = mean_loss(
        model, tokenizer, TEMPLATED + CHOICE_EXAMPLES, batch_size=4, max_length=128
    )
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


def test_progress_counts_every_scored_example_once(tokenizer):
    """``progress(n)`` per batch: the counts add up to the examples scored (skipped ones are not
    counted), with and without results changing."""
    model = _model()
    long_text = Example(prompt="y" * 200, response="z", category="c")
    examples = CHOICE_EXAMPLES + TEXT_EXAMPLES + [long_text]
    cfg = EvalConfig(batch_size=2, max_new_tokens=3)
    done: list[int] = []
    out = evaluate_examples(model, tokenizer, examples, cfg, max_length=128, progress=done.append)
    assert sum(done) == out["num_examples"] == len(examples) - 1
    assert done == [2, 2, 1, 2, 1]  # one call per batch: 5 choice, then 3 free-text examples
    assert out == evaluate_examples(model, tokenizer, examples, cfg, max_length=128)
    done.clear()
    loss = mean_loss(
        model, tokenizer, TEXT_EXAMPLES, batch_size=2, max_length=128, progress=done.append
    )
    assert done == [2, 1]
    assert loss == mean_loss(model, tokenizer, TEXT_EXAMPLES, batch_size=2, max_length=128)


def test_inference_gives_the_lm_head_a_contiguous_input():
    """With ``logits_to_keep`` the head sees a strided slice of the hidden states, which
    ``torch.matmul`` multiplies row by row over an expanded weight copy (14 s instead of 0.13 s
    for 128 rows of SmolLM2 in bf16); inside ``inference`` it gets a contiguous copy, and the
    hook is gone afterwards."""
    from fedamole.inference import inference

    model = tiny_causal_lm()
    head = model.get_output_embeddings()
    seen: list[bool] = []
    # a forward hook sees the arguments as the pre-hooks left them
    head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 200, (4, 9))
    with torch.no_grad():
        plain = model(input_ids=ids, logits_to_keep=3).logits
    with inference(model):
        fast = model(input_ids=ids, logits_to_keep=3).logits
    assert seen == [False, True]
    assert not head._forward_pre_hooks
    torch.testing.assert_close(fast, plain)


def test_per_example_records_say_what_the_model_answered(tokenizer):
    """The biased model answers "No" to every choice and "" to every text; records come in
    example order (text first here), and a too-long prompt is marked skipped."""
    model = _biased_model(tokenizer, {"</s>": 10.0, "N": 9.0, "o": 9.0})
    cfg = EvalConfig(batch_size=2, max_new_tokens=5)
    long = Example("word " * 200, "No", "long", choices=("Yes", "No"))
    examples = [TEXT_EXAMPLES[0], *CHOICE_EXAMPLES, long]
    records: list = []
    out = evaluate_examples(model, tokenizer, examples, cfg, max_length=128, per_example=records)
    assert [r["example"] for r in records] == list(range(len(examples)))
    assert records[0] == {"example": 0, "answer": "", "score": 0.0}
    for r, ex in zip(records[1:-1], CHOICE_EXAMPLES, strict=True):
        assert r == {"example": r["example"], "answer": "No", "score": float(ex.response == "No"),
                     "correct": ex.response == "No"}  # fmt: skip
    assert records[-1] == {"example": len(examples) - 1, "skipped": True}
    kept = [r for r in records if not r.get("skipped")]
    assert (out["num_examples"], out["num_skipped"]) == (len(kept), 1)
    assert out["score"] == pytest.approx(sum(r["score"] for r in kept) / len(kept))
