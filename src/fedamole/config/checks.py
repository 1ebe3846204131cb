"""Cross-field feasibility of a configuration, one small check per concern.

The types and ranges of :mod:`fedamole.config.schema` cannot say that an assignment problem has a
solution or that two ratios leave room for training data. Each function here checks one concern
on the sections it needs and returns its messages (empty when fine);
:func:`fedamole.config.tree.feasibility_errors` runs them all in report order, so that
:func:`fedamole.config.load` reports every problem at once (docs/config.md#validation).

Each message names the field, its value and the fix. This module imports only the sections.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from fedamole.config.schema import (
    BaselinesConfig,
    DataConfig,
    EvalConfig,
    FederationConfig,
    FlowerConfig,
    ModelConfig,
    MoLEConfig,
    PartitionConfig,
    PrivacyConfig,
    TrainConfig,
)

__all__ = [
    "UPDATE_DP_ALGORITHMS",
    "AlgorithmName",
    "algorithm_errors",
    "assignment_errors",
    "data_errors",
    "eval_timing_errors",
    "federation_errors",
    "fedlease_errors",
    "model_errors",
    "privacy_errors",
    "rank_errors",
    "secagg_errors",
    "secagg_privacy_errors",
    "secagg_shares",
    "target_errors",
    "train_errors",
]

# Every algorithm is registered beside its code in ``fedamole/algorithms/<name>_spec.py``
# (docs/algorithm.md#adding-an-algorithm). Validation takes the names from those file names, so it
# imports no algorithm code; the registry (fedamole.algorithms.registry) imports the modules and
# checks that each registers its own name. ``federation.algorithm`` is a ``str`` checked against
# them by :func:`algorithm_errors`; this Literal of them is for ``typing.get_args``.
_REGISTRATIONS = Path(__file__).resolve().parents[1] / "algorithms"
_NAMES = tuple(sorted(p.name.removesuffix("_spec.py") for p in _REGISTRATIONS.glob("*_spec.py")))
AlgorithmName = Literal[_NAMES]  # type: ignore[valid-type]


def assignment_errors(mole: MoLEConfig, federation: FederationConfig) -> list[str]:
    """FedAMoLE only: can RSEA give every client between min and max experts, and route?"""
    m, f, errors = mole, federation, []
    if f.algorithm != "fedamole":
        return errors
    n, e, k = f.num_clients, m.num_experts, m.clients_per_expert
    lo, hi = m.min_experts_per_client, m.max_experts_per_client
    if k > n:
        errors.append(
            f"`mole.clients_per_expert` ({k}) must be <= `federation.num_clients` ({n}): "
            "an expert cannot serve more clients than exist"
        )
    if lo > hi:
        errors.append(
            f"`mole.min_experts_per_client` ({lo}) must be <= `mole.max_experts_per_client` ({hi})"
        )
    if lo * n > e * k:
        errors.append(
            f"infeasible assignment: min_experts_per_client*num_clients ({lo}*{n}={lo * n}) > "
            f"num_experts*clients_per_expert ({e}*{k}={e * k}); raise `mole.num_experts` to "
            f">= {-(-lo * n // k)} or `mole.clients_per_expert`"
        )
    if e * k > n * hi:
        errors.append(
            f"infeasible assignment: num_experts*clients_per_expert ({e}*{k}={e * k}) > "
            f"num_clients*max_experts_per_client ({n}*{hi}={n * hi}); lower "
            f"`mole.num_experts` to <= {n * hi // k} or raise `mole.max_experts_per_client`"
        )
    if m.top_k > lo:
        errors.append(
            f"`mole.top_k` ({m.top_k}) must be <= `mole.min_experts_per_client` ({lo}), "
            "or a client with the fewest experts cannot route"
        )
    if f.homogeneous and (e * k) // n < max(lo, m.top_k):
        errors.append(
            f"homogeneous assignment gives floor(E*k_c/N) = {(e * k) // n} experts per client, "
            f"fewer than `mole.top_k` ({m.top_k}); raise `mole.num_experts`"
        )
    return errors


def target_errors(mole: MoLEConfig, federation: FederationConfig) -> list[str]:
    """FedAMoLE only: ``mole.target_modules`` names at least one layer, each entry a valid
    regular expression (an entry is a name's last component or a regex on the whole name).
    Whether each matches a module of the model is checked before a run (fedamole.preflight)."""
    if federation.algorithm != "fedamole":
        return []
    if not mole.target_modules:
        return ["`mole.target_modules` is empty; name the linear layers to wrap, e.g. ['q_proj']"]
    errors = []
    for pattern in mole.target_modules:
        try:
            re.compile(pattern)
        except re.error as exc:
            errors.append(
                f"`mole.target_modules` entry {pattern!r} is not a valid regular expression "
                f"({exc}); give a layer name such as 'q_proj' or a regex such as "
                "'model\\.layers\\.[0-3]\\..*_proj'"
            )
    return errors


RANKED = ("flexlora", "hetlora")
"""The algorithms whose clients hold LoRA adapters of different ranks (``[baselines.ranks]``)."""


def rank_errors(
    baselines: BaselinesConfig, mole: MoLEConfig, federation: FederationConfig
) -> list[str]:
    """The heterogeneous-rank baselines: one rank per client, or a distribution that can be drawn
    (every distribution but ``"homo"`` draws from FedAMoLE's per-client budgets, so FedAMoLE's
    assignment must be feasible; docs/algorithm.md#heterogeneous-ranks)."""
    r, n = baselines.ranks, federation.num_clients
    if federation.algorithm not in RANKED:
        return []
    if r.values:
        if len(r.values) != n:
            return [
                f"`baselines.ranks.values` has {len(r.values)} ranks for {n} clients "
                f"(`federation.num_clients`): give one rank per client, or [] to draw them from "
                f"`baselines.ranks.distribution` ({r.distribution!r})"
            ]
        return []
    if r.distribution == "homo":
        return []
    as_fedamole = federation.model_copy(update={"algorithm": "fedamole"})
    return [
        f"`baselines.ranks.distribution` = {r.distribution!r} draws ranks from FedAMoLE's "
        f"per-client budgets (the [mole] expert counts), which are infeasible: {problem}; fix "
        "[mole], or choose 'homo' (every client `baselines.lora_rank`) or explicit "
        "`baselines.ranks.values`"
        for problem in assignment_errors(mole, as_fedamole)
    ]


def fedlease_errors(baselines: BaselinesConfig, federation: FederationConfig) -> list[str]:
    """FedLEASE's warm-up must end before the last round, and its largest cluster count must
    leave a cluster with 2 clients (docs/algorithm.md#fedlease)."""
    if federation.algorithm != "fedlease":
        return []
    f, errors = baselines.fedlease, []
    if f.warmup_rounds >= federation.rounds:
        errors.append(
            f"`baselines.fedlease.warmup_rounds` ({f.warmup_rounds}) must be below "
            f"`federation.rounds` ({federation.rounds}): the clients are clustered after the "
            "warm-up and need a round with the cluster experts; lower the warm-up or add rounds"
        )
    if f.max_clusters is not None and f.max_clusters > federation.num_clients - 1:
        errors.append(
            f"`baselines.fedlease.max_clusters` ({f.max_clusters}) must be at most "
            f"`federation.num_clients` - 1 ({federation.num_clients - 1}): the silhouette needs "
            "a cluster of 2 clients; lower it, or leave it unset for min(N - 1, "
            "mole.max_experts_per_client)"
        )
    return errors


def eval_timing_errors(federation: FederationConfig, evaluation: EvalConfig) -> list[str]:
    """``eval.timing`` against the algorithm: FedAMoLE has no global model to evaluate."""
    if federation.algorithm != "fedamole" or evaluation.timing == "personalized":
        return []
    return [
        f"`eval.timing` ({evaluation.timing!r}) is not available for fedamole: it evaluates each "
        "client right after local training and aggregates nothing after the last "
        "round; use 'personalized'"
    ]


def data_errors(data: DataConfig, partition: PartitionConfig) -> list[str]:
    """The split ratios, the local dataset's path and the partition's Dirichlet alpha."""
    d, p, errors = data, partition, []
    if d.eval_ratio + d.test_ratio >= 1:
        errors.append(
            f"`data.eval_ratio` + `data.test_ratio` ({d.eval_ratio} + {d.test_ratio}) must be < 1"
        )
    if d.dataset == "local" and not d.path:
        errors.append("`data.path` is required when `data.dataset` = 'local'")
    if p.kind == "dirichlet" and p.alpha <= 0:
        errors.append(f"`partition.alpha` ({p.alpha}) must be > 0 for Dirichlet")
    return errors


def train_errors(train: TrainConfig) -> list[str]:
    """Gradient accumulation must split a batch evenly."""
    t, mb = train, train.micro_batch_size
    if mb is None or not t.batch_size % mb:
        return []
    return [
        f"`train.batch_size` ({t.batch_size}) must be a multiple of `train.micro_batch_size` ({mb})"
    ]


def federation_errors(federation: FederationConfig) -> list[str]:
    """Every injected failure (``federation.fail_clients``) names an existing round and client."""
    f, errors = federation, []
    for rnd, client in f.fail_clients:
        if not (0 <= client < f.num_clients) or not (0 <= rnd <= f.rounds):
            errors.append(
                f"`federation.fail_clients` entry ({rnd}, {client}) is out of range: "
                f"rounds 0..{f.rounds}, clients 0..{f.num_clients - 1}"
            )
    return errors


# The algorithms whose server averages uploaded weights through the shared hooks that apply
# privacy.updates (tests/unit/test_config_privacy.py checks each one has the hook).
UPDATE_DP_ALGORITHMS = ("fedamole", "feddpa", "fedit", "fedsa_lora", "ffa_lora")


def privacy_errors(federation: FederationConfig, privacy: PrivacyConfig) -> list[str]:
    """The Gaussian mechanism has exactly one of a target epsilon and a noise multiplier, and
    ``[privacy]`` settings are not given to a run that uses none of them (docs/privacy.md)."""
    f, p, errors = federation, privacy, []
    both = p.epsilon is not None and p.noise_multiplier is not None
    if f.privacy == "gaussian":
        if both:
            errors.append(
                f"`privacy.epsilon` ({p.epsilon}) and `privacy.noise_multiplier` "
                f"({p.noise_multiplier}) are both set: give the target epsilon (the noise is "
                "solved for it) or the noise multiplier (epsilon is reported), not both"
            )
        elif p.epsilon is None and p.noise_multiplier is None:
            errors.append(
                "`federation.privacy` = 'gaussian' needs `privacy.epsilon` (a target, e.g. "
                "privacy.epsilon=4) or `privacy.noise_multiplier` (e.g. 1.0)"
            )
        if f.algorithm != "fedamole":
            errors.append(
                f"`federation.privacy` = 'gaussian' protects FedAMoLE's RSEA statistics; "
                f"`federation.algorithm` = {f.algorithm!r} uploads none: set "
                "federation.privacy='none'"
            )
        elif f.assignment != "rsea":
            errors.append(
                f"`federation.privacy` = 'gaussian' protects the RSEA statistics, which "
                f"`federation.assignment` = {f.assignment!r} never uploads: set "
                "federation.assignment='rsea' or federation.privacy='none'"
            )
        if f.rounds < 2:
            errors.append(
                f"`federation.privacy` = 'gaussian' with `federation.rounds` ({f.rounds}): the "
                "statistics are uploaded in rounds 1..R-1, so there is nothing to protect; set "
                "federation.rounds >= 2 or federation.privacy='none'"
            )
    else:
        for name in ("epsilon", "noise_multiplier"):
            if getattr(p, name) is not None:
                errors.append(
                    f"`privacy.{name}` ({getattr(p, name)}) is set but `federation.privacy` = "
                    f"{f.privacy!r} does not use it: set federation.privacy='gaussian' or "
                    f"remove privacy.{name}"
                )
    return errors + _update_errors(f, p)


def _update_errors(f: FederationConfig, p: PrivacyConfig) -> list[str]:
    errors = []
    if p.updates == "none":
        for name in ("update_epsilon", "update_noise_multiplier"):
            if getattr(p, name) is not None:
                errors.append(
                    f"`privacy.{name}` ({getattr(p, name)}) is set but `privacy.updates` = "
                    f"'none': set privacy.updates='gaussian' or remove privacy.{name}"
                )
        return errors
    if p.update_epsilon is not None and p.update_noise_multiplier is not None:
        errors.append(
            f"`privacy.update_epsilon` ({p.update_epsilon}) and `privacy.update_noise_multiplier` "
            f"({p.update_noise_multiplier}) are both set: give one"
        )
    elif p.update_epsilon is None and p.update_noise_multiplier is None:
        errors.append(
            "`privacy.updates` = 'gaussian' needs `privacy.update_epsilon` (a target, e.g. 4) "
            "or `privacy.update_noise_multiplier` (e.g. 1.0)"
        )
    if f.algorithm not in UPDATE_DP_ALGORITHMS:
        errors.append(
            f"`privacy.updates` = 'gaussian' is not implemented for `federation.algorithm` = "
            f"{f.algorithm!r} (local training uploads nothing; the others average in their own "
            f"way): use one of {list(UPDATE_DP_ALGORITHMS)} or privacy.updates='none'"
        )
    if f.weighting != "uniform":
        errors.append(
            f"`privacy.updates` = 'gaussian' needs unweighted means: `federation.weighting` = "
            f"{f.weighting!r} makes one client's influence depend on its data; set "
            "federation.weighting='uniform'"
        )
    if p.delta >= 1 / f.num_clients:
        errors.append(
            f"`privacy.delta` ({p.delta}) must be < 1 / `federation.num_clients` "
            f"(1/{f.num_clients}) for client-level DP: a delta that large allows releasing one "
            f"client's update outright; lower it, e.g. privacy.delta={0.1 / f.num_clients:.2g}"
        )
    return errors


def model_errors(model: ModelConfig) -> list[str]:
    """A ``model.name`` is not blank, and one written as a path names an existing folder."""
    name = model.name
    if not name.strip():
        return [
            f"`model.name` = {name!r} is blank; give a hub id, a model folder, "
            "'embedded:smollm2-135m-instruct' or 'tiny:llama'"
        ]
    if name.startswith(("/", "./", "../", "~")) and not _is_folder(name):
        return [
            f"`model.name` = {name!r:.120}: no such folder; give a folder holding the model's "
            "config.json and weights, a hub id, 'embedded:smollm2-135m-instruct' or 'tiny:llama'"
        ]
    return []


def _is_folder(name: str) -> bool:
    """Whether ``name`` (``~`` expanded) is a folder; a path that cannot be one (too long, a NUL
    byte, an unknown ``~user``) is not."""
    try:
        return Path(name).expanduser().is_dir()
    except (OSError, RuntimeError, ValueError):
        return False


def algorithm_errors(federation: FederationConfig) -> list[str]:
    """A registered algorithm: one of :data:`AlgorithmName`."""
    names, name = _NAMES, federation.algorithm
    if name in names:
        return []
    return [f"`federation.algorithm` ({name!r}) is unknown; choose one of {sorted(names)}"]


SECAGG_MIN_CLIENTS = 3
"""The fewest clients a secure sum may have: with two, each can subtract its own update from the
sum (which the next global model reveals) and read the other's."""


def secagg_shares(flower: FlowerConfig, num_clients: int) -> tuple[int, int]:
    """``(num_shares, reconstruction_threshold)`` of a run's SecAgg+: the configured values, or
    every client and a majority of them."""
    s = flower.secaggplus
    shares = s.num_shares if s.num_shares is not None else num_clients
    threshold = s.reconstruction_threshold
    return shares, threshold if threshold is not None else shares // 2 + 1


def secagg_privacy_errors(flower: FlowerConfig, privacy: PrivacyConfig) -> list[str]:
    """Client-level DP on updates clips each client's update on the server, which SecAgg+ hides
    from it: the two do not combine (docs/privacy.md)."""
    if flower.secagg == "none" or privacy.updates == "none":
        return []
    return [
        f"`privacy.updates` = {privacy.updates!r} with `flower.secagg` = {flower.secagg!r}: "
        "update DP clips every client's update on the server, and SecAgg+ gives the server only "
        "the mean, so the clipping that bounds one client's influence cannot happen; use one of "
        "them (privacy.updates='none' or flower.secagg='none')"
    ]


def secagg_errors(flower: FlowerConfig, federation: FederationConfig) -> list[str]:
    """SecAgg+ (``flower.secagg = "secaggplus"``): enough clients to hide one among them, and
    shares, threshold and ranges Flower's protocol accepts and that cannot overflow. Whether the
    algorithm has a mean over all clients to protect is checked before a run
    (:func:`fedamole.preflight.secagg_errors`), where its registration is read."""
    if flower.secagg == "none":
        return []
    s, n = flower.secaggplus, federation.num_clients
    if n < SECAGG_MIN_CLIENTS:
        return [
            f"`flower.secagg` = 'secaggplus' needs `federation.num_clients` >= "
            f"{SECAGG_MIN_CLIENTS} (got {n}): with {n} client(s) the sum hides nothing, since "
            "each client can subtract its own update from it; add clients or set "
            '`flower.secagg = "none"`'
        ]
    errors = []
    shares, threshold = secagg_shares(flower, n)
    if shares > n:
        errors.append(
            f"`flower.secaggplus.num_shares` ({shares}) must be <= `federation.num_clients` ({n})"
        )
    elif shares < n and shares % 2 == 0:
        errors.append(
            f"`flower.secaggplus.num_shares` ({shares}) must be odd when below the number of "
            f"clients ({n}): each client shares with as many neighbours on each side; use "
            f"{shares + 1} or {shares - 1}"
        )
    if threshold >= shares:
        errors.append(
            f"`flower.secaggplus.reconstruction_threshold` ({threshold}) must be < num_shares "
            f"({shares}); unset it for a majority ({shares // 2 + 1})"
        )
    q, m = s.quantization_range, s.modulus_range
    if m & (m - 1):
        errors.append(f"`flower.secaggplus.modulus_range` ({m}) must be a power of 2, e.g. 2**32")
    if n * q >= m:
        errors.append(
            f"`flower.secaggplus.quantization_range` ({q}) times the clients ({n}) must be < "
            f"`modulus_range` ({m}), or the sum of the quantized updates wraps around; lower "
            f"quantization_range to <= {(m - 1) // n}"
        )
    return errors
