"""Dataset loaders on hand-made fixtures: records, templates, NI task choice, bad inputs."""

from __future__ import annotations

import re
import sys
import typing

import pytest

from fedamole.config import DataConfig
from fedamole.data import DataError, DataFileNotFoundError, load_examples
from fedamole.data.datasets import DATASETS
from fedamole.data.prompts import SNLI_CHOICES, alpaca_prompt, snli_prompt

from ._util import FIXTURES, data_config


def test_registry_matches_config_literal():
    assert set(DATASETS) == set(typing.get_args(DataConfig.model_fields["dataset"].annotation))


def test_local_jsonl_renders_alpaca_and_keeps_choices():
    examples = load_examples(data_config(dataset="local", path=FIXTURES / "local_ok.jsonl"))
    assert len(examples) == 4  # the blank line is skipped
    first, second, third, _ = examples
    assert first.prompt == alpaca_prompt("Name a primary color.")
    assert second.prompt == alpaca_prompt("Summarize the text.", "The cat sat on the mat all day.")
    assert (second.response, second.category) == ("A cat sat.", "summarization")
    assert third.choices == ("Yes", "No") and third.response == "No" and third.context == ""
    assert not first.is_choice


def test_local_json_list():
    examples = load_examples(data_config(dataset="local", path=FIXTURES / "local_list.json"))
    assert [ex.category for ex in examples] == ["chat", "copy"]
    assert examples[1].prompt == alpaca_prompt("Echo the input.", "abc")


def test_snli_folder_concatenates_files_drops_unlabeled_and_reads_both_schemas():
    examples = load_examples(data_config(dataset="snli", path=FIXTURES / "snli"))
    assert [ex.category for ex in examples] == [
        "entailment", "neutral", "contradiction", "entailment", "contradiction",
    ]  # fmt: skip
    assert [ex.response for ex in examples] == ["Yes", "Maybe", "No", "Yes", "No"]
    assert examples[0].prompt == snli_prompt("A man plays a guitar .", "A man makes music .")
    assert all(ex.choices == SNLI_CHOICES for ex in examples)


def test_ni_keeps_largest_tasks_with_name_tiebreak_and_both_schemas():
    root = FIXTURES / "ni_v28"
    # sizes: task001 = 3, task002 = 5, task010 = 3 (draft schema), task500 not in the split
    two = load_examples(data_config(dataset="natural_instructions", path=root, num_tasks=2))
    assert sorted({ex.category for ex in two}) == ["task001", "task002"]
    every = load_examples(data_config(dataset="natural_instructions", path=root))
    assert sorted({ex.category for ex in every}) == ["task001", "task002", "task010"]
    alpha = next(ex for ex in every if ex.category == "task001")
    assert alpha.instruction == "Copy the input."  # Definition[0] of the v2.8 list
    assert alpha.prompt == alpaca_prompt("Copy the input.", "alpha input 0")
    assert alpha.response == "alpha out 0"  # output[0]
    gamma = next(ex for ex in every if ex.category == "task010")
    assert gamma.instruction == "Draft schema: rewrite the input."


def test_synthetic_loader_uses_num_examples_and_families():
    examples = load_examples(data_config(num_examples=30, families=("parity", "sentiment")))
    assert len(examples) == 30
    assert {ex.category for ex in examples} == {"parity", "sentiment"}


@pytest.mark.parametrize(
    ("dataset", "path", "needle"),
    [
        ("dolly", "no/such/file.jsonl", "does not exist"),
        ("snli", "no/such/dir", "does not exist"),
    ],
)
def test_missing_path_is_a_file_not_found_error(dataset, path, needle):
    with pytest.raises(DataFileNotFoundError, match=needle) as info:
        load_examples(DataConfig(dataset=dataset, path=path))
    assert isinstance(info.value, FileNotFoundError) and path in str(info.value)


def test_bad_json_line_names_file_and_line():
    with pytest.raises(DataError, match=r"bad_json\.jsonl:2: not valid JSON"):
        load_examples(data_config(dataset="dolly", path=FIXTURES / "bad_json.jsonl"))


def test_bad_json_list_names_file_and_line():
    with pytest.raises(DataError, match=r"bad_list\.json:3: not valid JSON"):
        load_examples(data_config(dataset="local", path=FIXTURES / "bad_list.json"))


def test_missing_field_names_line_and_field():
    with pytest.raises(DataError, match=r"missing_field\.jsonl:2: missing field `response`"):
        load_examples(data_config(dataset="local", path=FIXTURES / "missing_field.jsonl"))


def test_dolly_requires_context_but_local_does_not():
    path = FIXTURES / "local_ok.jsonl"
    with pytest.raises(DataError, match=r"local_ok\.jsonl:3: missing field `context`"):
        load_examples(data_config(dataset="dolly", path=path))
    assert len(load_examples(data_config(dataset="local", path=path))) == 4


def test_response_outside_choices_is_rejected():
    with pytest.raises(DataError, match="must be one of `choices`"):
        load_examples(data_config(dataset="local", path=FIXTURES / "bad_choice.jsonl"))


def test_empty_dataset_is_rejected():
    with pytest.raises(DataError, match="has no examples"):
        load_examples(data_config(dataset="local", path=FIXTURES / "empty.jsonl"))


def test_bad_snli_label_is_rejected():
    with pytest.raises(DataError, match=r"snli_bad_label\.jsonl:1: SNLI `label` must be .* got 7"):
        load_examples(data_config(dataset="snli", path=FIXTURES / "snli_bad_label.jsonl"))


def test_ni_without_split_file_names_it():
    with pytest.raises(DataFileNotFoundError, match=r"train_tasks\.txt does not exist"):
        load_examples(data_config(dataset="natural_instructions", path=FIXTURES / "ni_no_split"))


def test_ni_without_task_folder():
    with pytest.raises(DataFileNotFoundError, match="no task folder"):
        load_examples(data_config(dataset="natural_instructions", path=FIXTURES / "snli"))


def test_local_without_path():
    with pytest.raises(DataError, match="`data.path` is required"):
        load_examples(DataConfig(dataset="local"))


def test_hub_without_datasets_package_tells_to_pass_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"databricks/databricks-dolly-15k.*data\.path="):
        load_examples(DataConfig(dataset="dolly"))


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_data_file_that_is_not_utf8_names_the_file_and_the_fix(tmp_path, encoding):
    path = tmp_path / f"{encoding}.jsonl"
    record = '{"instruction": "café", "context": "", "response": "x", "category": "a"}\n'
    path.write_bytes(record.encode(encoding))
    with pytest.raises(DataError, match=r"\.jsonl: not UTF-8 text \(byte \d+\).*re-save it"):
        load_examples(data_config(dataset="local", path=path))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"category": None}, "`category` = None must be a non-empty name"),
        ({"category": ""}, "`category` = '' must be a non-empty name"),
        ({"choices": ["yes"], "response": "yes"}, "`choices` has one option"),
    ],
)
def test_records_that_would_be_silently_wrong_are_errors(tmp_path, extra, message):
    import json

    record = {"instruction": "q", "context": "", "response": "x", "category": "a", **extra}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        load_examples(data_config(dataset="local", path=path))
