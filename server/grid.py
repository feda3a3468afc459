"""A Flower Grid that ends a round when its last reply arrives, not at the next poll.

Flower's grids push a round's messages, then pull for replies and sleep between pulls: 0.1 s
in the simulation engine, 3 s over the deployment's HTTPS grid. A round therefore ends up
to one sleep after its last reply: a simulated round whose training takes 0.14 s lasts 0.2
to 0.3 s, a deployed round waits up to 3 s after its last node answered. PromptGrid pulls
soon after each reply, since a round's replies tend to come together, and backs off while
none come, so a round of minutes costs a pull a second. Every other call goes to Flower's
grid unchanged; the timeout means what it means to Flower's `send_and_receive`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

FIRST_PULL_S = 0.005  # after the push and after each reply
LONGEST_PULL_S = 1.0   # the back-off's cap: a pull a second while a round trains


class PromptGrid(Grid):
    def __init__(self, grid: Grid, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grid, self._sleep, self._clock = grid, sleep, clock

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else self._clock() + timeout
        replies: list[Message] = []
        pause = FIRST_PULL_S
        while waiting:
            new = list(self.grid.pull_messages(waiting))
            replies += new
            waiting -= {reply.metadata.reply_to_message_id for reply in new}
            pause = FIRST_PULL_S if new else min(2 * pause, LONGEST_PULL_S)
            left = None if deadline is None else deadline - self._clock()
            if not waiting or (left is not None and left <= 0):
                break
            self._sleep(pause if left is None else min(pause, left))
        return replies
