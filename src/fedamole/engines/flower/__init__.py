"""The Flower engine (``fedamole[flower]``): the same algorithm objects on Flower
(docs/algorithm.md#engines).

=====================  =============================================================================
module                  what
=====================  =============================================================================
``records``             our typed messages and client state <-> Flower records, losslessly
``server_app``          the ServerApp: the shared round loop over a Flower Grid (``app`` for
                        deployment, :func:`~.server_app.make_server_app` for simulation)
``client_app``          the ClientApp: ``local_update`` with this node's data, state in
                        ``context.state``
``secagg``              ``flower.secagg``: Flower's SecAgg+ workflow and client mod, driven from our
                        round for the means over every client
``simulation``          ``fedamole run --engine flower``: Flower's simulation engine (Ray)
``deploy``              ``fedamole deploy-local``: a SuperLink and N SuperNodes on 127.0.0.1, TLS
                        and SuperNode authentication, one ``flwr run``, every process stopped
``certificates``        ``deploy``'s throw-away CA, SuperLink certificate and SuperNode key pairs
``processes``           ``deploy``'s process supervision: start, wait for, and stop by PID the
                        SuperLink and SuperNodes; run the ``flwr`` CLI
=====================  =============================================================================

Importing this package does not import ``flwr``; the modules above do. The core package never
imports it.
"""

from __future__ import annotations

import importlib.util

__all__ = ["FlowerUnavailableError", "require_flower"]

INSTALL_HINT = "install it with `make install-flower` or `pip install 'fedamole[flower]'`"


class FlowerUnavailableError(ValueError):
    """The Flower engine was asked for, but ``flwr`` (or its simulation extra) is missing."""


def require_flower(*, simulation: bool = False) -> None:
    """Raise :class:`FlowerUnavailableError` naming the fix when ``flwr`` (and, for
    ``simulation``, ``ray``) cannot be imported."""
    missing = [
        pkg
        for pkg in ("flwr", *(("ray",) if simulation else ()))
        if importlib.util.find_spec(pkg) is None
    ]
    if missing:
        raise FlowerUnavailableError(
            f"the Flower engine needs {' and '.join(missing)}, which is not installed; "
            + INSTALL_HINT
        )
