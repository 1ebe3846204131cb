"""An in-process Flower Grid that calls our ClientApp directly: a whole app in well under a second.

Every message and every ``context.state`` goes through Flower's serialization (deflate, inflate)
as it would between SuperLink, SuperNode and ClientApp process. ``ephemeral=True`` also drops the
ClientApp's per-process cache before each message, as deployment's fresh process per message does.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

from fedamole.engines.flower import client_app


def wire(record: RecordDict) -> RecordDict:
    """``record`` after Flower's serialization and back."""
    objects = get_all_nested_objects(record)
    return inflate_object_from_contents(
        record.object_id, {oid: obj.deflate() for oid, obj in objects.items()}
    )


class FakeGrid(Grid):
    """Nodes ``base+0 .. base+N-1`` with ``partition-id`` 0..N-1; ``silent`` nodes never answer."""

    def __init__(self, num_nodes: int, *, base: int = 1000, ephemeral: bool = False):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.contexts = {
            base + i: Context(
                run_id=1,
                node_id=base + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self.ephemeral = ephemeral
        self.silent: set[int] = set()
        self.sent: list[Message] = []

    def set_run(self, run) -> None:  # pragma: no cover - not used by our ServerApp
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        assert timeout is not None, "always pass a timeout"
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.silent:
                continue
            if self.ephemeral:
                client_app._RUNTIMES.clear()
            received = Message(wire(msg.content), metadata=msg.metadata)
            ctx = self.contexts[node]
            ctx.state = wire(ctx.state)
            try:
                reply = client_app.app(received, ctx)
            except Exception as exc:  # the runtimes turn a ClientApp exception into an error reply
                reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            if reply.has_content():
                reply = Message(wire(reply.content), reply_to=msg)
            replies.append(reply)
        return replies
