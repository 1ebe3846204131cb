"""The cases the fuzzing found (a traceback, a silent acceptance or a valid file refused), kept as
plain tests. Not marked ``fuzz``: they are fast and always run."""

from __future__ import annotations

import json

import pytest
import tomli_w

from fedamole.config import Config, ConfigError, DataConfig, load
from fedamole.data import DataError, DataFileNotFoundError, load_examples

from ._fuzzing import invoke_cli


def _config(tmp_path, text: str | bytes, name: str = "c.toml"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _refused(call, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


# --------------------------------------------------------------------------------------------------
# Config files


def test_extends_with_a_nul_byte_is_a_config_error(tmp_path):
    # was ValueError: embedded null byte (from Path.resolve)
    path = _config(tmp_path, 'extends = "a\\u0000b.toml"\n')
    _refused(lambda: load(path), "`extends`", "not a usable file path")


def test_extends_into_a_symlink_loop_is_a_config_error(tmp_path):
    # was RuntimeError: Symlink loop (from Path.resolve)
    (tmp_path / "a.toml").symlink_to("b.toml")
    (tmp_path / "b.toml").symlink_to("a.toml")
    path = _config(tmp_path, 'extends = "a.toml"\n')
    _refused(lambda: load(path), "`extends` = 'a.toml' is not a usable file path", "loop")


def test_extends_longer_than_a_file_name_is_a_config_error(tmp_path):
    # was OSError: [Errno 36] File name too long
    path = _config(tmp_path, f'extends = "{"x" * 300}.toml"\n')
    _refused(lambda: load(path), "cannot open the config file", "check the path")


@pytest.mark.parametrize("name", ["b" * 300 + ".toml", "b" * 300], ids=["toml", "shipped-name"])
def test_validate_of_a_config_path_too_long_for_the_file_system(name):
    # raised OSError: [Errno 36] File name too long
    result = invoke_cli(["validate", name])
    assert result.exit_code == 2 and "File name too long" in result.stderr


@pytest.mark.parametrize(
    "body",
    [
        "x = " + "[" * 5000 + "]" * 5000,  # was RecursionError from tomllib
        "[train]\nsteps = " + "9" * 5000,  # was ValueError: Exceeds the limit (4300 digits)
    ],
    ids=["nested-5000-deep", "5000-digit-integer"],
)
def test_toml_that_python_cannot_hold_is_a_config_error(tmp_path, body):
    path = _config(tmp_path, body + "\n")
    _refused(lambda: load(path), str(path))
    result = invoke_cli(["validate", str(path)])
    assert result.exit_code == 2


def test_an_integer_beyond_64_bits_names_the_field(tmp_path):
    # 0x + 5000 hex digits: was accepted, then printing it (the error, or `validate`'s output)
    # raised ValueError: Exceeds the limit (4300 digits) for integer string conversion
    path = _config(tmp_path, "[train]\nsteps = 0x" + "f" * 5000 + "\n")
    _refused(lambda: load(path), "`train.steps` = <an integer too long to print>", "64 bits")
    # 2**63 was accepted silently: numpy and torch take no such integer
    _refused(lambda: load(None, [f"train.steps={2**63}"]), "`train.steps`", "64 bits")
    _refused(lambda: load(None, [f"run.seed={2**64}"]), "`run.seed`", "64 bits")
    load(None, [f"partition.seed={2**63 - 1}"])


def test_booleans_inside_arrays_are_refused():
    # were read as numbers: adam_betas (0.0, 0.9), fail_clients ((1, 0),)
    _refused(lambda: load(None, ["train.adam_betas=[false, 0.9]"]), "`train.adam_betas`", "boolean")
    _refused(
        lambda: load(None, ["federation.fail_clients=[[true, 0]]"]),
        "`federation.fail_clients`",
        "boolean",
    )


def test_adam_betas_outside_0_1_are_refused():
    # were accepted; torch's Adam then failed every client of the run
    _refused(lambda: load(None, ["train.adam_betas=[1.5, 2.0]"]), "`train.adam_betas.0` = 1.5")
    _refused(lambda: load(None, ["train.adam_betas=[0.9, -0.1]"]), "`train.adam_betas.1` = -0.1")
    assert load(None, ["train.adam_betas=[0.0, 0.99]"]).train.adam_betas == (0.0, 0.99)


@pytest.mark.parametrize("key", ["run.seed", "partition.seed"])
def test_a_negative_seed_is_refused(tmp_path, key):
    # was accepted; `fedamole partition` then crashed in numpy's SeedSequence (ValueError)
    _refused(lambda: load(None, [f"{key}=-1"]), f"`{key}` = -1")
    config = _config(tmp_path, tomli_w.dumps({"federation": {"num_clients": 2}}))
    result = invoke_cli(["partition", str(config), f"{key}=-1", "data.num_examples=40"])
    assert result.exit_code == 2 and f"`{key}` = -1" in result.stderr


@pytest.mark.parametrize(
    "name",
    ["", "   ", "./" + "a" * 5000, "~no-such-user-xyz/model"],
    ids=["empty", "blank", "path-too-long", "unknown-home"],
)
def test_a_model_name_that_cannot_be_a_model_is_refused(name):
    # "" and "   " were accepted; the long path raised OSError, ~user RuntimeError
    _refused(lambda: load(None, [f"model.name={json.dumps(name)}"]), "`model.name`")


def test_every_error_is_reported_even_one_inside_an_array():
    # an error inside an array (fail_clients.0.0) hid the feasibility errors of other fields
    text = _refused(
        lambda: load(None, ['federation.fail_clients=[["xa", 1]]', 'model.name="./no/such"']),
        "`federation.fail_clients.0.0`",
        "`model.name` = './no/such'",
    )
    assert text.startswith("2 configuration error(s)")


# --------------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("train.steps=5\nfoo = 3", "holds more than one TOML value"),  # was 5, `foo` dropped
        ('run.name="a"\nmodel = 1', "holds more than one TOML value"),
        ("train.steps=" + "[" * 3000 + "]" * 3000, "nested too deeply"),  # was RecursionError
        ("train.steps=" + "9" * 5000, "4300 digits"),  # was ValueError
    ],
    ids=["trailing-statement", "trailing-table", "nested-3000-deep", "5000-digits"],
)
def test_an_override_that_is_not_one_usable_value_is_refused(item, fragment):
    text = _refused(lambda: load(None, [item]), "override `", fragment)
    assert "set_int_max_str_digits" not in text  # Python's advice is not the user's fix


def test_an_override_with_a_byte_that_is_not_utf8_is_refused(tmp_path):
    # `run.name=$'\xff'` reaches Python as "\udcff": was accepted, then `validate` printed a
    # config that is not UTF-8 (or raised UnicodeEncodeError), and `run` failed writing it
    _refused(lambda: load(None, ["run.name=a\udcff"]), "the byte 0xff", "not UTF-8")
    result = invoke_cli(["validate", str(_config(tmp_path, "")), "run.name=a\udcff"])
    assert result.exit_code == 2


def test_a_bare_word_override_is_still_a_string():
    assert load(None, ["run.name=my-run"]).run.name == "my-run"


# --------------------------------------------------------------------------------------------------
# Data files


def _local(tmp_path, text: str | bytes, name: str = "d.jsonl", dataset: str = "local"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_examples(DataConfig(dataset=dataset, path=str(path)))


def _record(**fields) -> dict:
    return {"instruction": "i", "response": "r", "category": "c", **fields}


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_jsonl_strings_may_hold_the_characters_splitlines_breaks_at(tmp_path, char):
    # a valid file was refused: str.splitlines() cut the line inside the JSON string
    line = json.dumps(_record(instruction=f"a{char}b"), ensure_ascii=False)
    (example,) = _local(tmp_path, line + "\r\n")
    assert example.instruction == f"a{char}b"


def test_jsonl_line_ends_cr_crlf_lf(tmp_path):
    lines = [json.dumps(_record(category=str(i))) for i in range(3)]
    text = lines[0] + "\r" + lines[1] + "\r\n" + lines[2] + "\n"
    assert [ex.category for ex in _local(tmp_path, text)] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("9" * 5000, "a number too long to read"),  # was ValueError
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # was RecursionError
    ],
    ids=["5000-digits", "nested-100000-deep"],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_that_python_cannot_hold_is_a_data_error(tmp_path, raw, fragment, suffix):
    record = json.dumps(_record())[:-1] + f', "x": {raw}}}'
    text = record if suffix == ".jsonl" else f"[{record}]"
    with pytest.raises(DataError, match=fragment):
        _local(tmp_path, text, name="d" + suffix)
    data = {"dataset": "local", "path": str(tmp_path / ("d" + suffix))}
    config = _config(tmp_path, tomli_w.dumps({"data": data}))
    result = invoke_cli(["partition", str(config)])
    assert result.exit_code == 2


@pytest.mark.parametrize("gold", [[0], {"a": 1}, 1, None])
def test_an_snli_gold_label_that_is_not_a_name_is_a_data_error(tmp_path, gold):
    # a list or an object raised TypeError: unhashable type
    line = json.dumps({"sentence1": "a", "sentence2": "b", "gold_label": gold})
    with pytest.raises(DataError, match="`gold_label` must be one of"):
        _local(tmp_path, line, dataset="snli")


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"response": "x", "choices": ["x", "x"]}, "repeats an option"),  # was accepted
        ({"category": "  "}, "must be a non-empty name"),  # was accepted as a category "  "
        ({"category": "\u2028"}, "must be a non-empty name"),
        ({"instruction": "a\ud800b"}, "lone surrogate"),  # was accepted; UTF-8 cannot hold it
        ({"category": "\udc80"}, "lone surrogate"),
        ({"response": "\ud800", "choices": ["\ud800", "y"]}, "lone surrogate"),
    ],
    ids=[
        "duplicate-choices",
        "blank-category",
        "separator-category",
        "surrogate-text",
        "surrogate-category",
        "surrogate-choice",
    ],
)
def test_records_that_were_accepted_silently(tmp_path, fields, fragment):
    with pytest.raises(DataError, match=fragment):
        _local(tmp_path, json.dumps(_record(**fields)))


def test_a_data_path_too_long_for_the_file_system_is_a_data_error():
    # was OSError: [Errno 36] File name too long
    with pytest.raises(DataFileNotFoundError, match="cannot be opened"):
        load_examples(DataConfig(dataset="local", path="x" * 5000 + ".jsonl"))


def _ni(tmp_path, task: bytes, split: bytes = b"task001_a\n"):
    (tmp_path / "tasks").mkdir(parents=True)
    (tmp_path / "splits" / "default").mkdir(parents=True)
    (tmp_path / "splits" / "default" / "train_tasks.txt").write_bytes(split)
    (tmp_path / "tasks" / "task001_a.json").write_bytes(task)
    return load_examples(DataConfig(dataset="natural_instructions", path=str(tmp_path)))


def _task(output) -> bytes:
    task = {"Definition": ["d"], "Instances": [{"input": "i", "output": output}]}
    return json.dumps(task).encode()


@pytest.mark.parametrize("output", [{"a": "b"}, 5], ids=["object", "number"])
def test_an_ni_output_that_is_not_a_list_is_a_data_error(tmp_path, output):
    # an object raised KeyError: 0, a number TypeError: not subscriptable
    with pytest.raises(DataError, match="non-empty `output` list"):
        _ni(tmp_path, _task(output))


def test_ni_files_that_are_not_utf8_are_data_errors(tmp_path):
    # both raised UnicodeDecodeError
    with pytest.raises(DataError, match="not UTF-8"):
        _ni(tmp_path / "a", _task(["o"]).decode().encode("utf-16"))
    with pytest.raises(DataError, match="not UTF-8"):
        _ni(tmp_path / "b", _task(["o"]), split="task001_a\n".encode("utf-16"))


def test_config_defaults_still_validate():
    assert load(None) == Config()
