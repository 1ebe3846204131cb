"""Expert assignment: RSEA affinity, the exact assignment problem, and the round policies.

See docs/algorithm.md#rsea: the affinity, the assignment problem, the schedule and its variants.

* :func:`affinity`: ``P = softmax_clients(H Q^T / sqrt(r))``, one row per expert ("reverse
  selection": experts choose clients).
* :func:`solve_assignment`: an exact, deterministic optimum of the assignment problem (each expert
  exactly ``k`` clients, each client ``[min, max]`` experts); the solver and its tie-break are
  documented in :mod:`fedamole.federated.bmatching`. The reference solves a boolean program with
  SCIP; any exact solver gives the same optimum value (the constraint matrix is totally unimodular).
* :func:`random_assignment`: round 0 (U(0,1) scores, softmax over clients, then the same solve).
* :class:`AssignmentPolicy`: ``"rsea"`` (solve on affinities every round, optionally with a
  retention bonus for the current holders), ``"static"`` (round 0 kept: FedAMoLE-R), ``"random"``
  (fresh random every round: FedAMoLE (Random)), ``"oracle"`` (experts given to groups of clients
  with related data, kept: the upper bound of what assignment can do, for benchmarks), each
  optionally with :func:`homogeneous_bounds`.
* Groups of related clients, the oracle's scores and what a round's assignment did (affinity
  spread, retention, group purity and its chance level) are in :mod:`fedamole.federated.groups`.
* :class:`Assignment`: one ``(E, N)`` bool matrix per module, with the JSON form of
  ``assignments/round_NNN.json``.

The shared expert is not part of an assignment: every client always holds it
(docs/algorithm.md#what-is-shared).

**Homogeneous bounds (a fix).** The reference's ``--homo_arch`` sets every client's count to
``floor(E k / N)``; when ``N`` does not divide ``E k`` that contradicts "each expert exactly ``k``
clients" and SCIP reports the program infeasible. We use ``[floor(E k / N), ceil(E k / N)]``: the
same as the reference whenever it is solvable, and counts that differ by at most one otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedamole.federated.bmatching import Backend, solve_bmatching
from fedamole.federated.groups import oracle_scores

__all__ = [
    "POLICIES",
    "Assignment",
    "AssignmentPolicy",
    "PolicyName",
    "affinity",
    "homogeneous_bounds",
    "random_assignment",
    "solve_assignment",
]

PolicyName = Literal["rsea", "static", "random", "oracle"]


def affinity(expert_emb: np.ndarray, client_emb: np.ndarray) -> np.ndarray:
    """RSEA affinity: each expert's softmax distribution over clients (docs/algorithm.md#affinity).

    Args:
        expert_emb: ``(E, r)`` aggregated expert embeddings ``H``.
        client_emb: ``(N, r)`` client (mean token) embeddings ``Q``.

    Returns:
        ``(E, N)`` float64, rows summing to 1: ``softmax(H Q^T / sqrt(r), axis=1)``.

    Raises:
        ValueError: on wrong ranks, mismatched ``r`` or non-finite input.
    """
    h, q = np.asarray(expert_emb, dtype=np.float64), np.asarray(client_emb, dtype=np.float64)
    if h.ndim != 2 or q.ndim != 2 or h.shape[1] != q.shape[1]:
        raise ValueError(
            f"affinity needs expert_emb (E, r) and client_emb (N, r); got {h.shape} and {q.shape}"
        )
    if not (np.isfinite(h).all() and np.isfinite(q).all()):
        raise ValueError("affinity: embeddings contain NaN or Inf; reject the offending uploads")
    scores = h @ q.T / math.sqrt(h.shape[1])  # (E, N)
    scores -= scores.max(axis=1, keepdims=True)  # stable softmax
    weights = np.exp(scores)
    return weights / weights.sum(axis=1, keepdims=True)


def homogeneous_bounds(num_experts: int, num_clients: int, per_expert: int) -> tuple[int, int]:
    """Per-client bounds for equal expert counts (the reference's ``--homo_arch``, fixed; see the
    module docstring).

    Returns:
        ``(floor(E k / N), ceil(E k / N))``.

    Raises:
        ValueError: if a client would hold no domain expert (``E k < N``).
    """
    total = num_experts * per_expert
    if total < num_clients:
        raise ValueError(
            f"homogeneous assignment: num_experts*per_expert ({num_experts}*{per_expert}={total}) "
            f"< num_clients ({num_clients}) leaves a client without experts; raise num_experts"
        )
    return total // num_clients, -(-total // num_clients)


def solve_assignment(
    affinity: np.ndarray,
    *,
    per_expert: int,
    min_per_client: int,
    max_per_client: int,
    backend: Backend = "auto",
) -> np.ndarray:
    """An exact optimum of the assignment problem (docs/algorithm.md#assignment-problem).

    Maximizes ``sum(affinity * X)`` with each expert (row) taking exactly ``per_expert`` clients
    and each client (column) holding between ``min_per_client`` and ``max_per_client`` experts.
    Deterministic: ties are broken as :mod:`fedamole.federated.bmatching` documents (lower-numbered
    experts with lower-numbered clients).

    Args:
        affinity: ``(E, N)`` finite scores, usually from :func:`affinity`.
        per_expert: clients per expert ``k_c``.
        min_per_client: least experts per client.
        max_per_client: most experts per client.
        backend: ``"auto"`` (OR-tools min-cost flow when installed, else the scipy HiGHS LP),
            ``"flow"`` or ``"lp"``.

    Returns:
        ``(E, N)`` bool; ``X[e, c]`` means client ``c`` holds expert ``e``.

    Raises:
        ValueError: on a bad shape, non-finite scores, or bounds no assignment can meet.
    """
    scores = np.asarray(affinity)
    errors = _check_problem(scores, per_expert, min_per_client, max_per_client)
    if errors:
        raise ValueError("invalid assignment problem:\n  " + "\n  ".join(errors))
    return solve_bmatching(
        scores.astype(np.float64),
        row_sum=per_expert,
        col_min=min_per_client,
        col_max=max_per_client,
        backend=backend,
    )


def _check_problem(scores: np.ndarray, k: int, lo: int, hi: int) -> list[str]:
    if scores.ndim != 2 or scores.size == 0 or not np.issubdtype(scores.dtype, np.number):
        return [f"affinity must be a non-empty numeric (E, N) array; got shape {scores.shape}"]
    if not np.isfinite(scores).all():
        return [f"affinity has {int((~np.isfinite(scores)).sum())} NaN/Inf entries"]
    e, n = scores.shape
    errors = []
    if not 1 <= k <= n:
        errors.append(f"per_expert ({k}) must be in [1, num_clients ({n})]")
    if not 0 <= lo <= hi:
        errors.append(f"need 0 <= min_per_client ({lo}) <= max_per_client ({hi})")
    if lo * n > e * k:
        errors.append(
            f"min_per_client*num_clients ({lo}*{n}={lo * n}) > num_experts*per_expert "
            f"({e}*{k}={e * k}): lower min_per_client or add experts"
        )
    if e * k > hi * n:
        errors.append(
            f"num_experts*per_expert ({e}*{k}={e * k}) > max_per_client*num_clients "
            f"({hi}*{n}={hi * n}): raise max_per_client or use fewer experts"
        )
    return errors


def random_assignment(
    num_experts: int,
    num_clients: int,
    *,
    rng: np.random.Generator,
    per_expert: int,
    min_per_client: int,
    max_per_client: int,
    backend: Backend = "auto",
) -> np.ndarray:
    """A random feasible assignment, as in round 0 (docs/algorithm.md#assignment-schedule).

    Scores ``U(0, 1)^{E x N}`` from ``rng``, softmax over clients, then :func:`solve_assignment`.

    Returns:
        ``(E, N)`` bool.
    """
    scores = rng.random((num_experts, num_clients))  # (E, N)
    return solve_assignment(
        _softmax_rows(scores),
        per_expert=per_expert,
        min_per_client=min_per_client,
        max_per_client=max_per_client,
        backend=backend,
    )


@dataclass(frozen=True, eq=False)
class Assignment:
    """Which domain experts each client holds, per module.

    Attributes:
        modules: module name -> ``(E, N)`` bool matrix, in the given order; the arrays are
            read-only copies (treat the dict as read-only too).
    """

    modules: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        mats = {str(k): np.array(v, dtype=bool) for k, v in self.modules.items()}
        shapes = {m.shape for m in mats.values()}
        if not mats or len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"Assignment needs >= 1 module, all (E, N); got shapes {shapes}")
        for m in mats.values():
            m.setflags(write=False)
        object.__setattr__(self, "modules", mats)

    @property
    def num_experts(self) -> int:
        return next(iter(self.modules.values())).shape[0]

    @property
    def num_clients(self) -> int:
        return next(iter(self.modules.values())).shape[1]

    def held(self, client: int) -> dict[str, np.ndarray]:
        """Sorted expert ids ``(n,)`` int64 that ``client`` holds, per module."""
        if not 0 <= client < self.num_clients:
            raise IndexError(f"client {client} not in [0, {self.num_clients})")
        return {name: np.flatnonzero(m[:, client]) for name, m in self.modules.items()}

    def counts(self) -> np.ndarray:
        """``(N, M)`` int64: experts held by each client in each module (module order)."""
        return np.stack([m.sum(axis=0) for m in self.modules.values()], axis=1)

    def violations(self, *, per_expert: int, min_per_client: int, max_per_client: int) -> list[str]:
        """Constraint violations of the assignment problem (empty when feasible)."""
        out = []
        for name, m in self.modules.items():
            rows, cols = m.sum(axis=1), m.sum(axis=0)
            for e in np.flatnonzero(rows != per_expert):
                out.append(f"{name}: expert {e} has {rows[e]} clients, not {per_expert}")
            for c in np.flatnonzero((cols < min_per_client) | (cols > max_per_client)):
                out.append(
                    f"{name}: client {c} holds {cols[c]} experts, "
                    f"outside [{min_per_client}, {max_per_client}]"
                )
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: per module, one sorted list of expert ids per client."""
        return {
            "num_experts": self.num_experts,
            "num_clients": self.num_clients,
            "modules": {
                name: [np.flatnonzero(m[:, c]).tolist() for c in range(self.num_clients)]
                for name, m in self.modules.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assignment:
        """Inverse of :meth:`to_json`; raises ``ValueError`` naming the bad entry."""
        try:
            e, n, modules = int(data["num_experts"]), int(data["num_clients"]), data["modules"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"assignment JSON needs num_experts, num_clients, modules: {exc}"
            ) from exc
        mats = {}
        for name, per_client in modules.items():
            if len(per_client) != n:
                raise ValueError(f"modules.{name}: {len(per_client)} clients, expected {n}")
            mat = np.zeros((e, n), dtype=bool)
            for c, ids in enumerate(per_client):
                idx = np.asarray(ids, dtype=np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= e or np.unique(idx).size < idx.size):
                    raise ValueError(f"modules.{name}[{c}]: ids {ids} not distinct in [0, {e})")
                mat[idx, c] = True
            mats[name] = mat
        return cls(mats)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Assignment):
            return NotImplemented
        return self.modules.keys() == other.modules.keys() and all(
            np.array_equal(m, other.modules[k]) for k, m in self.modules.items()
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: not hashable


@dataclass(frozen=True)
class AssignmentPolicy:
    """How the assignment evolves over rounds (docs/algorithm.md#assignment-schedule).

    Attributes:
        kind: ``"rsea"``, ``"static"``, ``"random"`` or ``"oracle"`` (see :data:`POLICIES` and
            the module docstring).
        num_experts: domain experts per module ``E``.
        num_clients: clients ``N``.
        per_expert: clients per expert ``k_c``.
        min_per_client: least experts per client (ignored when ``homogeneous``).
        max_per_client: most experts per client (ignored when ``homogeneous``).
        homogeneous: equal counts, :func:`homogeneous_bounds`.
        backend: solver back-end for :func:`solve_assignment`.
        retention: ``"rsea"`` only: added to the affinity of each expert's current holders
            before solving, so an expert moves only when the gain exceeds it (0: the paper's
            rule; the solve stays exact).
    """

    kind: PolicyName
    num_experts: int
    num_clients: int
    per_expert: int = 2
    min_per_client: int = 2
    max_per_client: int = 8
    homogeneous: bool = False
    backend: Backend = "auto"
    retention: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.retention) and self.retention >= 0):
            raise ValueError(f"retention = {self.retention}: give a finite number >= 0")
        if self.kind not in POLICIES:
            raise ValueError(f"unknown assignment policy {self.kind!r}; choose from {POLICIES}")
        lo, hi = self.bounds
        dummy = np.zeros((self.num_experts, self.num_clients))
        errors = _check_problem(dummy, self.per_expert, lo, hi)
        if errors:
            raise ValueError("infeasible assignment policy:\n  " + "\n  ".join(errors))

    @property
    def bounds(self) -> tuple[int, int]:
        """Effective ``(min_per_client, max_per_client)``."""
        if self.homogeneous:
            return homogeneous_bounds(self.num_experts, self.num_clients, self.per_expert)
        return self.min_per_client, self.max_per_client

    @property
    def needs_embeddings(self) -> bool:
        """Whether clients must compute and upload RSEA embeddings."""
        return self.kind == "rsea"

    def solve(self, affinity: np.ndarray) -> np.ndarray:
        """:func:`solve_assignment` with this policy's bounds; ``(E, N)`` -> ``(E, N)`` bool."""
        lo, hi = self.bounds
        return solve_assignment(
            affinity,
            per_expert=self.per_expert,
            min_per_client=lo,
            max_per_client=hi,
            backend=self.backend,
        )

    def initial(
        self,
        modules: Iterable[str],
        *,
        rng: np.random.Generator,
        groups: Iterable[Iterable[int]] | None = None,
    ) -> Assignment:
        """Round 0: a random assignment per module, drawn from ``rng`` in ``modules`` order; for
        ``"oracle"``, experts dealt to ``groups`` (:func:`oracle_scores`) instead.

        Raises:
            ValueError: ``"oracle"`` without ``groups``.
        """
        lo, hi = self.bounds
        if self.kind == "oracle":
            if groups is None:
                raise ValueError(
                    "federation.assignment = 'oracle' needs the partition's client groups (the "
                    "embedded engine, or a Flower simulation whose server can load the data)"
                )
            scores = oracle_scores(self.num_experts, self.num_clients, groups)
            return Assignment({name: self.solve(scores) for name in modules})
        return Assignment(
            {
                name: random_assignment(
                    self.num_experts,
                    self.num_clients,
                    rng=rng,
                    per_expert=self.per_expert,
                    min_per_client=lo,
                    max_per_client=hi,
                    backend=self.backend,
                )
                for name in modules
            }
        )

    def next(
        self,
        previous: Assignment,
        *,
        rng: np.random.Generator,
        affinities: Mapping[str, np.ndarray] | None = None,
    ) -> Assignment:
        """The assignment for the next round.

        Args:
            previous: the current assignment (its module order is kept).
            rng: randomness for ``"random"`` (unused otherwise).
            affinities: ``{module: (E, N)}`` from :func:`affinity`; required for ``"rsea"``.
        """
        return _NEXT[self.kind](self, previous, rng, affinities)


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    w = np.exp(scores - scores.max(axis=1, keepdims=True))  # (E, N)
    return w / w.sum(axis=1, keepdims=True)


def _next_rsea(
    policy: AssignmentPolicy, previous: Assignment, affinities: Mapping[str, np.ndarray] | None
) -> Assignment:
    missing = [m for m in previous.modules if affinities is None or m not in affinities]
    if missing or affinities is None:
        raise ValueError(f"RSEA needs an affinity matrix for every module; missing {missing[:3]}")
    if not policy.retention:  # the paper's rule, bit for bit
        return Assignment({m: policy.solve(affinities[m]) for m in previous.modules})
    return Assignment(
        {
            m: policy.solve(affinities[m] + policy.retention * held)
            for m, held in previous.modules.items()
        }
    )


# kind -> (policy, previous, rng, affinities) -> next assignment
_NEXT: dict[str, Callable[..., Assignment]] = {
    "rsea": lambda policy, previous, rng, affinities: _next_rsea(policy, previous, affinities),
    "static": lambda policy, previous, rng, affinities: previous,
    "random": lambda policy, previous, rng, affinities: policy.initial(previous.modules, rng=rng),
    "oracle": lambda policy, previous, rng, affinities: previous,
}
POLICIES: tuple[str, ...] = tuple(_NEXT)
