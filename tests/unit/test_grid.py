"""PromptGrid: a round ends when its last reply is in, not at Flower's next poll."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.serverapp import Grid

from server.grid import LONGEST_PULL_S, PromptGrid


class ScriptedGrid(Grid):
    """Replies become available at given times of a fake clock; sleeping advances it."""

    def __init__(self, ready_at: dict[str, float]) -> None:
        self.ready_at, self.now, self.pulls = ready_at, 0.0, []

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds

    def push_messages(self, messages):
        list(messages)
        return list(self.ready_at)

    def pull_messages(self, message_ids):
        self.pulls.append(self.now)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                for i in message_ids if self.ready_at[i] <= self.now]

    def get_node_ids(self):
        return [7, 8]

    def set_run(self, run): raise NotImplementedError
    @property
    def run(self): raise NotImplementedError
    def create_message(self, *args, **kwargs): raise NotImplementedError
    def send_and_receive(self, messages, *, timeout=None): raise NotImplementedError


def prompt(ready_at: dict[str, float]) -> tuple[ScriptedGrid, PromptGrid]:
    inner = ScriptedGrid(ready_at)
    return inner, PromptGrid(inner, sleep=inner.sleep, clock=lambda: inner.now)


def replied_to(replies) -> list[str]:
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_a_short_round_ends_soon_after_its_last_reply():
    # Two workers, four clients: replies at 0.07 s and 0.14 s. Flower's in-memory grid
    # pulls at 0, 0.1 and 0.2 s and so ends this round at 0.2 s.
    inner, grid = prompt({"a": 0.07, "b": 0.07, "c": 0.14, "d": 0.14})
    assert replied_to(grid.send_and_receive([], timeout=60)) == ["a", "b", "c", "d"]
    assert 0.14 <= inner.now < 0.16


def test_a_long_round_is_pulled_about_once_a_second_and_ends_within_a_pull():
    inner, grid = prompt({"a": 30.0, "b": 95.0})
    assert replied_to(grid.send_and_receive([], timeout=None)) == ["a", "b"]
    assert 95.0 <= inner.now <= 95.0 + LONGEST_PULL_S
    assert len(inner.pulls) < 95 + 2 * 10  # a pull a second, plus two back-offs' worth


@pytest.mark.parametrize("timeout", [0.0, 2.5, 30.0])
def test_the_timeout_returns_the_replies_in_by_then_and_never_sleeps_past_it(timeout):
    inner, grid = prompt({"a": 0.5, "b": 1e9})
    replies = grid.send_and_receive([], timeout=timeout)
    assert replied_to(replies) == (["a"] if timeout >= 0.5 else [])
    assert inner.now == pytest.approx(timeout)
    assert inner.pulls[-1] == pytest.approx(timeout)  # a last look at the deadline


def test_every_other_call_is_the_wrapped_grids():
    inner, grid = prompt({"a": 0.0})
    assert list(grid.get_node_ids()) == [7, 8]
    assert [n.node_id for n in grid.get_nodes()] == [7, 8]
    assert replied_to(grid.pull_messages(["a"])) == ["a"]
    with pytest.raises(NotImplementedError):
        grid.create_message(None, "train", 7, "1")
