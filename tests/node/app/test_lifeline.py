"""`node.app.lifeline`: a daemon's watcher fires when, and only when, the supervisor's write end
of the pipe is closed (the devnet tests kill a real supervisor)."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from node.app.lifeline import LIFELINE_ENV, Lifeline, take_lifeline_fd, watch_lifeline

DEADLINE_S = 10.0


async def test_watcher_fires_when_the_write_end_closes() -> None:
    r, w = os.pipe()
    broken = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_lifeline, r, broken.set)
        os.write(w, b"noise")  # the supervisor never writes; if it did, it is not a break
        await trio.testing.wait_all_tasks_blocked()
        assert not broken.is_set()
        os.close(w)
        with trio.fail_after(DEADLINE_S):
            await broken.wait()
    with pytest.raises(OSError):
        os.fstat(r)  # the watcher closed its end


async def test_watcher_sees_a_break_that_came_before_it() -> None:
    r, w = os.pipe()
    os.close(w)
    broken = trio.Event()
    with trio.fail_after(DEADLINE_S):
        await watch_lifeline(r, broken.set)
    assert broken.is_set()


async def test_watcher_cancelled_closes_its_fd_and_does_not_fire() -> None:
    r, w = os.pipe()
    fired = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_lifeline, r, lambda: fired.append(1))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert fired == []
    with pytest.raises(OSError):
        os.fstat(r)
    os.close(w)


def test_take_lifeline_fd_from_the_environment() -> None:
    lifeline = Lifeline()
    try:
        env = lifeline.child_env({"PATH": "/bin"})
        assert env == {"PATH": "/bin", LIFELINE_ENV: str(lifeline.read_fd)}
        assert lifeline.pass_fds == (lifeline.read_fd,)
        assert take_lifeline_fd(env) == lifeline.read_fd
        assert LIFELINE_ENV not in env  # nothing the daemon starts inherits the variable
        assert take_lifeline_fd(env) is None
        assert not os.get_inheritable(lifeline.write_fd)  # only pass_fds hands the read end on
    finally:
        lifeline.close()


def test_invalid_lifeline_fd_is_ignored() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    for value in ("not-a-number", str(r)):
        env = {LIFELINE_ENV: value}
        assert take_lifeline_fd(env) is None and env == {}


def test_one_lifeline_per_process() -> None:
    assert Lifeline.of_this_process() is Lifeline.of_this_process()
