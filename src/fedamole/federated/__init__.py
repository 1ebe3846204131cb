"""The server side of FedAMoLE, as pure functions and small records (docs/algorithm.md#rsea).

* :mod:`~fedamole.federated.assignment`: RSEA affinity, the exact assignment problem, the round
  policies (rsea, static, random; homogeneous bounds) and the :class:`Assignment` record.
* :mod:`~fedamole.federated.bmatching`: the exact, deterministic b-matching solver behind it
  (OR-tools min-cost flow, or a scipy HiGHS LP fallback, both certified in integer arithmetic).
* :mod:`~fedamole.federated.aggregation`: holder-only expert means, all-client means, upload checks.
* :mod:`~fedamole.federated.privacy`: the paper's noise heuristic on uploaded embeddings.
* :mod:`~fedamole.federated.gaussian`: the Gaussian mechanism on them (per-example clipping).
* :mod:`~fedamole.federated.update_dp`: client-level DP for model updates (clip, noise per group).
* :mod:`~fedamole.federated.accounting`: epsilon over rounds, on the ``dp-accounting`` library.
* :mod:`~fedamole.federated.messages`: typed server/client messages with byte counts.

Import from the submodules; this package imports nothing so that each stays cheap to load.
"""

__all__: list[str] = []
