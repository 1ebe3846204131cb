"""Hand-computed aggregation cases (docs/algorithm.md#aggregation) and upload checks."""

from __future__ import annotations

import pytest
import torch

from fedamole.federated.aggregation import (
    TensorSpec,
    aggregate_experts,
    aggregate_shared,
    average_tensors,
    check_update,
    spec_of,
)


def _t(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def test_average_tensors_unweighted_and_weighted() -> None:
    a, b, c = _t(1.0, 2.0), _t(3.0, 6.0), _t(5.0, 1.0)
    torch.testing.assert_close(average_tensors([a, b, c]), _t(3.0, 3.0))
    # weights 1, 1, 2 -> (1 + 3 + 10) / 4, (2 + 6 + 2) / 4
    torch.testing.assert_close(average_tensors([a, b, c], [1, 1, 2]), _t(3.5, 2.5))
    torch.testing.assert_close(average_tensors([a, b], [0, 5]), b)


def test_average_tensors_keeps_dtype_and_sums_in_float64() -> None:
    # In float32, 1e8 + 1 == 1e8, so a float32 running sum would give 0 instead of 1/3.
    parts = [_t(1e8), _t(1.0), _t(-1e8)]
    out = average_tensors(parts)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _t(1.0 / 3.0))
    bf16 = average_tensors([p.to(torch.bfloat16) for p in (_t(1.0), _t(2.0))])
    assert bf16.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("tensors", "weights", "match"),
    [
        ([], None, "at least one"),
        ([_t(1.0), _t(1.0, 2.0)], None, "cannot average"),
        ([_t(1.0), _t(1.0, dtype=torch.float64)], None, "cannot average"),
        ([torch.tensor([1]), torch.tensor([2])], None, "floating"),
        ([_t(1.0), _t(2.0)], [1.0], "weights"),
        ([_t(1.0), _t(2.0)], [-1.0, 2.0], "weights"),
        ([_t(1.0), _t(2.0)], [0.0, 0.0], "weights"),
        ([_t(1.0), _t(2.0)], [float("nan"), 1.0], "weights"),
    ],
)
def test_average_tensors_rejects_bad_input(tensors: list, weights: list | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        average_tensors(tensors, weights)


def test_experts_are_averaged_among_holders_only() -> None:
    uploads = {
        0: {3: (_t(1.0), _t(10.0)), 5: (_t(2.0), _t(20.0))},
        1: {3: (_t(3.0), _t(30.0))},
        2: {5: (_t(6.0), _t(60.0)), 7: (_t(9.0), _t(90.0))},
    }
    out = aggregate_experts(uploads)
    assert list(out) == [3, 5, 7]
    torch.testing.assert_close(out[3], (_t(2.0), _t(20.0)))  # clients 0, 1
    torch.testing.assert_close(out[5], (_t(4.0), _t(40.0)))  # clients 0, 2
    torch.testing.assert_close(out[7], (_t(9.0), _t(90.0)))  # client 2 alone
    weighted = aggregate_experts(uploads, weights={0: 1.0, 1: 3.0, 2: 100.0})
    torch.testing.assert_close(weighted[3], (_t(2.5), _t(25.0)))  # (1 + 9) / 4, renormalized
    torch.testing.assert_close(weighted[7], (_t(9.0), _t(90.0)))


def test_expert_aggregation_ignores_mapping_order() -> None:
    a = {0: {1: (_t(1.0),)}, 1: {1: (_t(2.0),)}, 2: {1: (_t(4.0),)}}
    b = {2: a[2], 0: a[0], 1: a[1]}
    assert torch.equal(aggregate_experts(a)[1][0], aggregate_experts(b)[1][0])


def test_expert_with_inconsistent_parts_raises() -> None:
    with pytest.raises(ValueError, match="different tensor counts"):
        aggregate_experts({0: {1: (_t(1.0),)}, 1: {1: (_t(1.0), _t(2.0))}})


def test_shared_parameters_are_averaged_over_all_clients() -> None:
    uploads = {0: (_t(1.0, 1.0), _t(0.0)), 1: (_t(3.0, 5.0), _t(4.0)), 2: (_t(2.0, 0.0), _t(2.0))}
    token_proj, shared = aggregate_shared(uploads)
    torch.testing.assert_close(token_proj, _t(2.0, 2.0))
    torch.testing.assert_close(shared, _t(2.0))
    (w,) = aggregate_shared({0: (_t(1.0),), 1: (_t(4.0),)}, weights={0: 2.0, 1: 1.0})
    torch.testing.assert_close(w, _t(2.0))
    with pytest.raises(ValueError, match="at least one"):
        aggregate_shared({})


def test_check_update_accepts_a_good_upload() -> None:
    sent = {"experts:m:A": torch.zeros(2, 8, 16), "token_proj:m": torch.zeros(8, 16)}
    assert check_update({k: v + 1 for k, v in sent.items()}, spec_of(sent)) == []


def test_check_update_reports_every_problem() -> None:
    expected = {
        "a": TensorSpec((2, 3), torch.float32),
        "b": TensorSpec((4,)),
        "c": TensorSpec((1,)),
        "d": TensorSpec((2,), torch.float32),
    }
    bad = torch.zeros(2, 3)
    bad[0, 1], bad[1, 2] = float("nan"), float("inf")
    received = {
        "a": bad,
        "b": torch.zeros(5, dtype=torch.float64),
        "d": [1.0, 2.0],
        "extra": torch.zeros(1),
    }
    assert check_update(received, expected) == [
        "c: missing",
        "extra: unexpected",
        "a: 2 NaN/Inf of 6 values",
        "b: shape (5,), expected (4,)",
        "d: expected a tensor, got list",
    ]
    assert "extra: unexpected" not in check_update(received, expected, allow_extra=True)
    wrong_dtype = check_update({"a": torch.zeros(2, 3, dtype=torch.bfloat16)}, {"a": expected["a"]})
    assert wrong_dtype == ["a: dtype torch.bfloat16, expected torch.float32"]
