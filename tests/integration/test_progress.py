"""Progress display of a client's phases: evaluation and RSEA statistics report through
``ClientContext.phase`` (the embedded engine draws bars from it on a terminal)."""

from __future__ import annotations

import contextlib

from fedamole.algorithms.base import ClientContext
from fedamole.algorithms.runtime import build_runtime
from fedamole.data import load_federated_data
from fedamole.engines.embedded import LocalClients


def test_client_phases_report_every_item(smoke):
    cfg = smoke.replace(**{"federation.rounds": 3, "eval.batch_size": 2})
    runtime = build_runtime(cfg)
    algo, model = runtime.algo, runtime.model
    data = load_federated_data(cfg)
    algo.setup(model)
    msg = algo.configure_round(1)[0]
    seen: dict[str, list[int]] = {}

    @contextlib.contextmanager
    def phase(label, total):
        done = seen.setdefault(label, [total])
        yield done.append

    client = data.clients[0]
    ctx = ClientContext(0, client, model, runtime.tokenizer, phase=phase)
    algo.local_update(1, msg, ctx)
    assert set(seen) >= {"test", "eval", "RSEA statistics"}
    assert seen["test"][0] == len(client.test) == sum(seen["test"][1:])
    assert seen["eval"][0] == len(client.eval) == sum(seen["eval"][1:])
    assert seen["RSEA statistics"][0] == sum(seen["RSEA statistics"][1:]) > 0


def test_the_embedded_engine_gives_clients_a_phase_display_only_with_progress(smoke):
    cfg = smoke
    runtime = build_runtime(cfg)
    contexts = [ClientContext(0, None, runtime.model, runtime.tokenizer)]
    quiet = LocalClients(cfg, runtime.algo, contexts, progress=False)
    loud = LocalClients(cfg, runtime.algo, contexts, progress=True)
    for clients, shown in ((quiet, False), (loud, True)):
        # run_round sets the displays before calling the algorithm; stop at the first client
        with contextlib.suppress(Exception):
            next(clients.run_round(0, {0: None}))
        assert (contexts[0].phase is not None) is shown
