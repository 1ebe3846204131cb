"""Routing embeddings of a FedAMoLE run: do the clients route their data differently? (Fig. 8, left)

For every client of a FedAMoLE run, the client's model at the end of the run (its MoLE state in
the run's last checkpoint, or on the Flower engine in the client's own snapshot of that round:
:func:`fedamole.rundir.client_state`) reads batches of that client's own data without
gradients. Per batch and per sampled MoLE module, the routing probabilities (softmax over the
experts the client holds, docs/algorithm.md#routing) are averaged over the batch's real tokens and
written at the experts' global ids, 0 for the experts the client does not hold. The concatenation
over the sampled modules is the batch's **routing vector** (length ``modules × E``); every
probability block sums to 1.

Modules are sampled by layer, every ``every``-th decoder layer (the paper samples every third):
the first integer in a module's qualified name is its layer index; a model without one keeps every
module.

:func:`project` maps the vectors to 2-D: PCA (SVD of the centred points, no extra dependency) or
t-SNE (scikit-learn, when installed). :func:`client_separability` is the leave-one-out 1-nearest-
neighbour accuracy of the client label in the full routing space (chance: ``1 / clients``).

Reading it: a client's vector is zero outside the experts it holds, so clients with different
expert sets separate **by construction**, in the projection and in :func:`client_separability`,
even if their routing inside those sets were alike (FedAMoLE-R, static random experts, also scores
1.00). Neither is evidence about RSEA or about data-driven routing.
:func:`shared_expert_separability` compares clients on what they have in common only: for each pair
of clients, the routing probabilities over the experts both hold (per module, renormalised to sum
to 1; modules where they share fewer than 2 experts are left out), then the leave-one-out 1-NN
accuracy of the pair's label against its chance level. High values say that two clients mix the
*same* experts differently on their own data; they still say nothing about whether RSEA chose the
experts well (see the ``rsea`` figure's group purity for that).

Deviations from the paper's figure: it plots routing *logits*, which exist only for the experts a
client holds (different per client), so we plot probabilities placed in the common space of the E
global experts. It compares round 1 with round R-2; a run directory keeps its last checkpoint only,
so this shows the end of the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedamole.algorithms.fedamole import client_mole_state
from fedamole.algorithms.runtime import build_runtime
from fedamole.config import load
from fedamole.data import load_federated_data
from fedamole.data.collate import collate, encode_train
from fedamole.mole import set_mole_state
from fedamole.mole.layer import MoLELinear
from fedamole.mole.router import Routing
from fedamole.rundir import RunDir, client_state, load_checkpoint
from fedamole.training import model_inputs

__all__ = [
    "PROJECTIONS",
    "RoutingPoints",
    "SharedSeparability",
    "client_separability",
    "explained_variance",
    "project",
    "routing_points",
    "shared_expert_separability",
]

PROJECTIONS = ("pca", "tsne")
SPLITS = ("train", "embedding", "eval", "test")


@dataclass(frozen=True)
class RoutingPoints:
    """Routing vectors of every client's batches."""

    points: np.ndarray  # (P, modules × E) float64
    clients: np.ndarray  # (P,) int, the client of each point
    modules: tuple[str, ...]  # the sampled modules, in vector order
    num_experts: int  # E
    round: int  # the checkpoint's round
    # client -> per sampled module (vector order), the global ids of the experts it holds
    held: dict[int, tuple[tuple[int, ...], ...]] = field(default_factory=dict)


def routing_points(
    run_dir: str | Path,
    *,
    split: str = "train",
    every: int = 3,
    max_batches: int = 16,
    batch_size: int | None = None,
) -> RoutingPoints:
    """Routing vectors of up to ``max_batches`` batches of each client's ``split``.

    Args:
        run_dir: a FedAMoLE run directory with ``config.toml`` and ``checkpoints/``.
        split: which of the client's splits to read (train, embedding, eval, test).
        every: sample the modules of every ``every``-th layer (0, every, 2 * every, ...).
        max_batches: most batches per client.
        batch_size: examples per batch (default: the run's ``train.batch_size``).

    Raises:
        ValueError: not a FedAMoLE run, a bad argument, a client without usable examples, or a
            Flower run without a client's state snapshot of the last checkpoint's round.
        CheckpointError: the run has no readable checkpoint.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if every < 1 or max_batches < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(
            f"every, max_batches and batch_size must be >= 1, got {every}, {max_batches}, "
            f"{batch_size}"
        )
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    cfg = load(run.config)
    if cfg.federation.algorithm != "fedamole":
        raise ValueError(
            f"{run_dir.name}: routing needs a FedAMoLE run, this one ran "
            f"{cfg.federation.algorithm!r}"
        )
    state = load_checkpoint(run.checkpoints)
    runtime = build_runtime(cfg)  # the MoLE layers, as in training
    model, tokenizer = runtime.model, runtime.tokenizer
    model.requires_grad_(False)
    model.eval()
    modules = _sampled(model, every)
    data = load_federated_data(cfg)
    size = batch_size or cfg.train.batch_size
    device = next(model.parameters()).device
    num_experts = cfg.mole.num_experts
    points, owners, held = [], [], {}
    # the embedded engine checkpoints every client's state; on Flower ``clients`` is empty and
    # each client's own snapshot holds it (client_state reads either)
    for client in sorted(state["clients"]) or range(cfg.federation.num_clients):
        set_mole_state(model, client_mole_state(client_state(run_dir, state, client)))
        held[int(client)] = tuple(
            tuple(int(i) for i in m.expert_ids.tolist()) for m in modules.values()
        )
        encoded = [
            enc
            for example in getattr(data.clients[client], split)[: max_batches * size]
            if (enc := encode_train(example, tokenizer, cfg.model.max_length)) is not None
        ]
        if not encoded:
            raise ValueError(f"client {client} has no usable {split!r} example to route")
        for start in range(0, len(encoded), size):
            batch = collate(encoded[start : start + size], tokenizer.pad_token_id)
            inputs = model_inputs(batch, device)
            points.append(_batch_vector(model, modules, inputs, num_experts))
            owners.append(client)
    return RoutingPoints(
        np.stack(points), np.array(owners), tuple(modules), num_experts, int(state["round"]), held
    )


def project(points: np.ndarray, method: str = "pca", *, seed: int = 0) -> np.ndarray:
    """``(P, D) -> (P, 2)``: PCA (the first two principal components) or t-SNE.

    Raises:
        ValueError: an unknown method, or t-SNE without scikit-learn.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {method!r}")
    x = np.asarray(points, dtype=np.float64)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise ValueError(
                "the t-SNE projection needs scikit-learn: `pip install scikit-learn`, or use "
                "--projection pca"
            ) from None
        perplexity = max(1.0, min(30.0, (len(x) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = np.zeros((len(x), 2))
    k = min(2, vt.shape[0])
    out[:, :k] = centred @ vt[:k].T  # (P, k)
    return out


def explained_variance(points: np.ndarray) -> float:
    """Share of the total variance the first two principal components hold (0 when constant)."""
    centred = np.asarray(points, dtype=np.float64) - np.mean(points, axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    total = float((s**2).sum())
    return float((s[:2] ** 2).sum() / total) if total > 0 else 0.0


def client_separability(points: np.ndarray, clients: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of the client label (Euclidean, full space)."""
    x = np.asarray(points, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("client separability needs at least 2 points")
    sq = (x**2).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * x @ x.T  # (P, P)
    np.fill_diagonal(dist, np.inf)
    return float(np.mean(clients[dist.argmin(axis=1)] == clients))


@dataclass(frozen=True)
class SharedSeparability:
    """Result of :func:`shared_expert_separability` (``nan`` accuracy and chance with no pair)."""

    accuracy: float  # mean over compared pairs of the leave-one-out 1-NN accuracy
    chance: float  # mean over compared pairs of that accuracy's expectation under random labels
    pairs: int  # client pairs compared (sharing >= 2 experts in at least one sampled module)
    skipped: int  # client pairs sharing fewer than 2 experts in every sampled module


def shared_expert_separability(
    points: np.ndarray,
    clients: np.ndarray,
    num_experts: int,
    held: dict[int, Sequence[Sequence[int]]] | None = None,
) -> SharedSeparability:
    """How well routing on the experts two clients share tells the two clients apart.

    For each pair of clients ``(a, b)`` and each module block of the routing vectors (``E`` wide),
    take the experts both hold; modules where they share fewer than 2 are dropped (one expert's
    renormalised probability is always 1). Each point of ``a`` and ``b`` keeps its probabilities on
    the shared experts, renormalised to sum to 1 per module, concatenated over the kept modules.
    The pair's score is the leave-one-out 1-NN accuracy of the label ``a``/``b`` (Euclidean; a tie
    between nearest neighbours gives the share of them with the right label); its chance level,
    the expectation under random labels, is ``(n_a (n_a - 1) + n_b (n_b - 1)) / (n (n - 1))``,
    0.5 for large balanced pairs. Differences in which experts clients hold do not enter.

    Args:
        points: ``(P, modules × E)`` routing vectors (:class:`RoutingPoints`).
        clients: ``(P,)`` client of each point.
        num_experts: ``E``, the width of one module block.
        held: client -> per module the expert ids it holds; by default an expert is held by a
            client when some point of the client routes a positive probability to it.

    Raises:
        ValueError: ``points`` whose width is not a multiple of ``num_experts``, or mismatched
            lengths.
    """
    x = np.asarray(points, dtype=np.float64)
    clients = np.asarray(clients)
    if x.ndim != 2 or x.shape[1] % num_experts or len(x) != len(clients):
        raise ValueError(
            f"points must be (P, modules × {num_experts}) with one client each, got {x.shape} "
            f"and {clients.shape}"
        )
    blocks = x.reshape(len(x), -1, num_experts)  # (P, M, E)
    masks = {}
    for c in np.unique(clients):
        if held is not None and int(c) in held:
            mask = np.zeros(blocks.shape[1:], dtype=bool)  # (M, E)
            for m, ids in enumerate(held[int(c)]):
                mask[m, list(ids)] = True
        else:
            mask = (blocks[clients == c] > 0).any(axis=0)  # (M, E)
        masks[c] = mask
    accuracies, chances, skipped = [], [], 0
    ordered = list(masks)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            shared = masks[a] & masks[b]  # (M, E)
            kept = np.flatnonzero(shared.sum(axis=1) >= 2)
            if not len(kept):
                skipped += 1
                continue
            at = (clients == a) | (clients == b)
            parts = []
            for m in kept:
                probs = blocks[at][:, m, shared[m]]  # (n, S)
                parts.append(probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-300))
            accuracies.append(_loo_1nn(np.concatenate(parts, axis=1), clients[at]))
            n, n_a = int(at.sum()), int((clients == a).sum())
            n_b = n - n_a
            chances.append((n_a * (n_a - 1) + n_b * (n_b - 1)) / (n * (n - 1)))
    if not accuracies:
        return SharedSeparability(float("nan"), float("nan"), 0, skipped)
    return SharedSeparability(
        float(np.mean(accuracies)), float(np.mean(chances)), len(accuracies), skipped
    )


def _loo_1nn(x: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy; ties between nearest neighbours share the credit."""
    sq = (x**2).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)  # (n, n)
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(axis=1, keepdims=True)  # (n, 1)
    ties = dist <= nearest + 1e-12 * (1.0 + nearest)  # (n, n)
    same = labels[:, None] == labels[None, :]  # (n, n)
    return float(np.mean((ties & same).sum(axis=1) / ties.sum(axis=1)))


def _sampled(model: nn.Module, every: int) -> dict[str, MoLELinear]:
    """MoLE modules of every ``every``-th layer, in model order."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, MoLELinear)}
    if not found:
        raise ValueError("the model has no MoLE layers")
    layer = {n: int(d.group()) if (d := re.search(r"\d+", n)) else 0 for n in found}
    return {n: m for n, m in found.items() if layer[n] % every == 0}


def _batch_vector(
    model: nn.Module,
    modules: dict[str, MoLELinear],
    inputs: dict[str, torch.Tensor],
    num_experts: int,
) -> np.ndarray:
    mask = inputs["attention_mask"].reshape(-1).to(torch.float64)  # (T,)
    blocks: dict[str, np.ndarray] = {}

    def hook_for(name: str):
        def hook(module: MoLELinear, routing: Routing) -> None:
            probs = routing.probs.detach().to(torch.float64)  # (T, n)
            mean = (probs * mask[:, None]).sum(0) / mask.sum()  # (n,)
            block = np.zeros(num_experts)
            block[module.expert_ids.cpu().numpy()] = mean.cpu().numpy()
            blocks[name] = block

        return hook

    handles = [m.register_routing_hook(hook_for(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return np.concatenate([blocks[n] for n in modules])
