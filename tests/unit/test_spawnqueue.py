"""The spawn queue and a start's clock, with fakes: order, positions, release on failure
and cancel, and that waiting in line does not count against start_timeout."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

pytest.importorskip("jupyterhub")

from jupyterhub.objects import Hub
from tornado import web

from hubdeploy.backends.base import Backend, BackendConfig, BackendError, Running
from hubdeploy.hub import spawner as spawner_mod
from hubdeploy.hub import spawnqueue
from hubdeploy.hub.spawner import HubdeploySpawner
from hubdeploy.hub.spawnqueue import (
    QueueTimeout,
    SpawnQueue,
    StartClock,
    StartTimeout,
    run_within,
    shared_queue,
)
from hubsections import SHARED, profile

from dataclasses import dataclass

# Every wait in these tests is for an event, bounded by this.
LIMIT = 10.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, LIMIT))


async def until(cond, what: str) -> None:
    """Let other tasks run until ``cond()`` holds (bounded; no fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIMIT
    while not cond():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0)  # one turn of the loop


# -- the queue alone ----------------------------------------------------------------------


def test_first_come_first_served_with_positions():
    async def main():
        q = SpawnQueue(1)
        a, b, c, d = (q.enter(n) for n in "abcd")
        assert a.admitted and [t.ahead for t in (a, b, c, d)] == [0, 1, 2, 3]
        order = []

        async def wait(t):
            await t.wait(LIMIT)
            order.append(t.name)

        tasks = [asyncio.ensure_future(wait(t)) for t in (d, b, c)]  # waiting order is irrelevant
        await asyncio.sleep(0)
        assert order == []
        a.release()
        await until(lambda: order == ["b"], "b admitted")
        assert [c.ahead, d.ahead] == [1, 2]
        # A late arrival joins the end of the line.
        e = q.enter("e")
        assert e.ahead == 3
        b.release()
        await until(lambda: order == ["b", "c"], "c admitted")
        c.release()
        await asyncio.gather(*tasks)
        assert order == ["b", "c", "d"] and e.ahead == 1
        d.release()
        assert e.admitted

    run(main())


def test_limit_admits_that_many_at_once():
    async def main():
        q = SpawnQueue(3)
        tickets = [q.enter(str(i)) for i in range(5)]
        assert [t.admitted for t in tickets] == [True] * 3 + [False] * 2
        assert [t.ahead for t in tickets[3:]] == [1, 2]
        tickets[1].release()
        assert tickets[3].admitted and tickets[4].ahead == 1

    run(main())


def test_cancel_while_waiting_leaves_the_line_and_cancel_after_grant_passes_the_slot_on():
    async def main():
        q = SpawnQueue(1)
        a, b, c, d = (q.enter(n) for n in "abcd")
        tb = asyncio.ensure_future(b.wait(LIMIT))
        tc = asyncio.ensure_future(c.wait(LIMIT))
        await asyncio.sleep(0)
        tb.cancel()  # b gives up (a stop while it waits)
        with pytest.raises(asyncio.CancelledError):
            await tb
        assert [c.ahead, d.ahead] == [1, 2] and q.waiting == type(q.waiting)([c, d])
        a.release()  # c is granted; cancelled before it runs, it must hand the slot on
        tc.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tc
        assert d.admitted and not q.waiting and q.running == {d}

    run(main())


def test_release_is_idempotent_and_a_failed_holder_frees_its_slot():
    async def main():
        q = SpawnQueue(1)
        a, b = q.enter("a"), q.enter("b")
        a.release()
        a.release()
        assert b.admitted and q.running == {b}

    run(main())


def test_queue_timeout_leaves_the_line_with_the_count_ahead():
    async def main():
        q = SpawnQueue(1)
        q.enter("a")
        b, c = q.enter("b"), q.enter("c")
        with pytest.raises(QueueTimeout, match="still 1 starts ahead"):
            await b.wait(0.01)
        assert c.ahead == 1  # b's place is gone

    run(main())


def test_changed_wakes_watchers():
    async def main():
        q = SpawnQueue(1)
        a = q.enter("a")
        q.enter("b")
        watcher = asyncio.ensure_future(q.changed(LIMIT))
        await asyncio.sleep(0)
        assert not watcher.done()
        a.release()
        await asyncio.wait_for(watcher, LIMIT)

    run(main())


def test_one_queue_per_process():
    spawnqueue._QUEUE = None
    try:
        q = shared_queue(4)
        assert shared_queue(4) is q and shared_queue(2) is q and q.limit == 2
        with pytest.raises(ValueError):
            SpawnQueue(0)
    finally:
        spawnqueue._QUEUE = None


# -- the clock ----------------------------------------------------------------------------


def test_clock_extends_a_budget_at_a_time_up_to_its_ceiling():
    now = [100.0]
    clock = StartClock(10, 25, now=lambda: now[0])
    assert clock.remaining() == 10
    now[0] = 112
    assert clock.remaining() == 0
    assert clock.extend() and clock.deadline == 120
    assert clock.extend() and clock.deadline == 125  # capped
    assert not clock.extend()
    assert StartClock(30, 5).ceiling == 30  # never below the budget
    assert not StartClock(0, 5).extend()  # a zero budget cannot loop


def test_run_within_fails_work_without_progress_and_cancels_it():
    async def main():
        stuck = asyncio.Event()
        work = asyncio.ensure_future(stuck.wait())

        async def no():
            return False

        with pytest.raises(StartTimeout, match="no progress for 0.05 s"):
            await run_within(StartClock(0.05, 10), work, no, "start")
        await asyncio.sleep(0)
        assert work.cancelled()

    run(main())


def test_run_within_keeps_progressing_work_past_its_budget_until_the_ceiling():
    async def main():
        checks = []

        async def yes():
            checks.append(1)
            return True

        done = asyncio.Event()

        async def work():
            await until(lambda: len(checks) >= 3, "three progress checks")
            done.set()
            return "up"

        assert await run_within(StartClock(0.01, 10), work(), yes, "start") == "up"
        with pytest.raises(StartTimeout, match="its ceiling"):
            await run_within(StartClock(0.01, 0.03), asyncio.Event().wait(), yes, "start")

    run(main())


# -- in the spawner ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GateConfig(BackendConfig):
    site: str


class GateBackend(Backend):
    """A start that waits for the test to open its gate (or fails, when told to)."""

    Config = GateConfig

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.fail: set[str] = set()
        self.ticks: dict[str, int] = {}  # progress steps a start records before returning

    def gate(self, user: str) -> asyncio.Event:
        return self.gates.setdefault(user, asyncio.Event())

    async def start(self, spec, state):
        self.started.append(spec.user)
        state["phase"] = "create"
        for i in range(self.ticks.get(spec.user, 0)):
            await asyncio.sleep(0.02)  # a slow but progressing start: a step per 20 ms
            state["step"] = i
        await self.gate(spec.user).wait()
        if spec.user in self.fail:
            raise BackendError(f"{spec.user}: engine refused")
        state["phase"] = "started"
        return "127.0.0.1", 1

    async def stop(self, state):
        pass

    async def poll(self, state):
        return Running()

    async def progress(self, state):
        yield {"progress": 50, "message": "backend"}


PROFILE = profile(name="p", image_ref="x:1", default=True)


@pytest.fixture
def make(monkeypatch):
    monkeypatch.setattr(spawner_mod, "get_backend", lambda name: GateBackend)
    monkeypatch.setattr(spawner_mod, "_BACKENDS", {})
    monkeypatch.setattr(spawnqueue, "_QUEUE", None)

    def make(user: str, **kw):
        kw.setdefault("http_timeout", 0)  # nothing listens: do not wait for it
        kw.setdefault("concurrent_spawn_limit", 1)
        kw.setdefault("identity", SHARED)
        s = HubdeploySpawner(
            user=SimpleNamespace(name=user, url=f"/user/{user}/", escaped_name=user),
            hub=Hub(), orm_spawner=SimpleNamespace(name="", server=None),
            profiles=[PROFILE], backend="gate", backend_configs={"gate": GateConfig(site="t")}, **kw,
        )
        return s

    return make


async def hub_spawn(s: HubdeploySpawner):
    """What JupyterHub 6.1.1's User.spawn does around start(): the pre-spawn hook, then
    ``asyncio.wait_for(start(), timeout=spawner.start_timeout)`` read at that moment."""
    s._start_pending = True
    try:
        s.run_pre_spawn_hook()
        return await asyncio.wait_for(s.start(), timeout=s.start_timeout)
    finally:
        s._start_pending = False


async def messages(s: HubdeploySpawner) -> list[str]:
    return [e["message"] async for e in s.progress()]


def test_waiting_user_sees_starts_ahead_decrease_then_the_backend(make):
    async def main():
        spawners = [make(f"u{i}") for i in range(4)]
        backend = spawners[0].get_backend()
        tasks = [asyncio.ensure_future(hub_spawn(s)) for s in spawners]
        await until(lambda: spawners[3]._ticket is not None, "the 4th in line")
        seen = asyncio.ensure_future(messages(spawners[3]))
        for i in range(3):
            await until(lambda: backend.started == [f"u{j}" for j in range(i + 1)], f"u{i} started")
            assert [s._ticket.ahead for s in spawners[i + 1:]] == list(range(1, 4 - i))
            backend.gate(f"u{i}").set()
        backend.gate("u3").set()
        await asyncio.gather(*tasks)
        assert backend.started == ["u0", "u1", "u2", "u3"]  # first come, first served
        got = await seen
        waits = [m for m in got if m.startswith("waiting:")]
        assert [m.split(" starts")[0] for m in waits] == ["waiting: 3", "waiting: 2", "waiting: 1"]
        assert got[-1] == "backend"

    run(main())


def test_a_failed_start_frees_its_slot_for_the_next(make):
    async def main():
        a, b = make("a"), make("b")
        backend = a.get_backend()
        backend.fail.add("a")
        ta, tb = asyncio.ensure_future(hub_spawn(a)), asyncio.ensure_future(hub_spawn(b))
        await until(lambda: backend.started == ["a"], "a started")
        backend.gate("a").set()
        with pytest.raises(web.HTTPError, match="engine refused"):
            await ta
        await until(lambda: backend.started == ["a", "b"], "b started after a failed")
        backend.gate("b").set()
        assert await tb == ("127.0.0.1", 1)

    run(main())


def test_a_stop_while_waiting_leaves_the_line(make):
    async def main():
        a, b, c = make("a"), make("b"), make("c")
        backend = a.get_backend()
        tasks = {s.user.name: asyncio.ensure_future(hub_spawn(s)) for s in (a, b, c)}
        await until(lambda: c._ticket is not None and c._ticket.ahead == 2, "c waits behind b")
        tasks["b"].cancel()  # what JupyterHub's timeout or a stop does to a pending start
        await until(lambda: c._ticket.ahead == 1, "c moved up")
        backend.gate("a").set()
        backend.gate("c").set()
        await asyncio.gather(tasks["a"], tasks["c"])
        assert backend.started == ["a", "c"]
        with pytest.raises(asyncio.CancelledError):
            await tasks["b"]

    run(main())


def test_time_in_line_does_not_count_against_start_timeout(make):
    """b's start_timeout (1 s) is shorter than its wait behind a (1.5 s), yet it starts."""
    async def main():
        a, b = make("a"), make("b", start_timeout=1)
        backend = a.get_backend()
        ta, tb = asyncio.ensure_future(hub_spawn(a)), asyncio.ensure_future(hub_spawn(b))
        await until(lambda: b._ticket is not None and b._ticket.ahead == 1, "b waits")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # Hold a's slot until b has waited 1.5x its whole budget.
        await b._ticket.queue.changed(1.5)
        assert loop.time() - t0 >= 1.5 and not tb.done()
        backend.gate("a").set()
        backend.gate("b").set()
        assert await tb == ("127.0.0.1", 1)
        await ta
        assert b.start_timeout == 1  # the site's value again, once start() is over

    run(main())


def test_a_start_without_progress_fails_after_its_budget_counted_from_its_turn(make):
    async def main():
        a = make("a", start_timeout=1)
        with pytest.raises(web.HTTPError, match="no progress for 1 s") as exc:
            await hub_spawn(a)  # the gate never opens and nothing changes
        assert exc.value.status_code == 504
        assert shared_queue(1).running == set()  # the slot is free again

    run(main())


def test_a_progressing_start_outlives_its_budget(make):
    async def main():
        a = make("a", start_timeout=1)
        backend = a.get_backend()
        backend.ticks["a"] = 75  # about 1.5 s of steady progress, longer than the budget
        backend.gate("a").set()
        assert await hub_spawn(a) == ("127.0.0.1", 1)

    run(main())
