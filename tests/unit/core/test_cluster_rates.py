"""A key's requests/second held over a cluster (no HTTP): each server is a ``KeyRates`` with its
``ClusterRates`` on one database (SQLite and PostgreSQL). What a server is asked, what it writes
and reads back, and the share of each key's rate it then runs at."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from modelyard.core.cluster import FORGET_S, LIVE_S
from modelyard.core.cluster_rates import ClusterRates, shares
from modelyard.core.key_rates import KeyRates, TokenBucket
from modelyard.store.db import Database
from modelyard.store.tables import KeyDemandRow, utcnow


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


class Server:
    """One server of the cluster: its keys' buckets and its share of their rates."""

    def __init__(self, db: Database, name: str) -> None:
        self.rates = KeyRates()
        self.cluster = ClusterRates(db, self.rates, server=name)

    def ask(self, key: str, rate: float, times: int, now: float) -> int:
        """``times`` requests of ``key`` at instant ``now``: how many were admitted."""
        return sum(self.rates.take(key, rate, now) == 0 for _ in range(times))

    def share(self, mine: dict[str, float], now: float = 0.0) -> None:
        """One round with this demand: write it, read the others', run at the shares."""
        self.cluster.hand_out(mine, self.cluster.exchange(mine, now=now))


def _rows(db: Database) -> dict[str, dict[str, float]]:
    with db.read() as s:
        return {server: demand for server, demand in s.execute(select(KeyDemandRow.server_id, KeyDemandRow.demand))}


# -- one server's buckets ----------------------------------------------------------------------
def test_a_retuned_bucket_keeps_its_tokens_up_to_its_new_capacity() -> None:
    bucket = TokenBucket.new(10.0, now=0.0)
    assert all(bucket.take(0.0) == 0 for _ in range(6))  # 4 tokens left
    bucket.retune(2.0, now=0.0)
    assert (bucket.rate, bucket.capacity, bucket.tokens) == (2.0, 2.0, 2.0)  # no more than one second
    bucket.retune(20.0, now=0.5)  # earned 1 at 2/s meanwhile, capped at 2; no new burst
    assert bucket.tokens == 2.0 and bucket.capacity == 20.0
    assert bucket.take(0.5) == 0 and bucket.take(0.5) == 0
    assert bucket.take(0.5) == pytest.approx(1 / 20)


def test_a_key_runs_at_this_servers_share_of_its_rate() -> None:
    rates = KeyRates()
    rates.share({"k": 0.5})
    admitted = [rates.take("k", 10.0, now=0.0) == 0 for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3  # a bucket of one second at 5/s
    assert rates.take("k", 10.0, now=0.0) == pytest.approx(1 / 5)
    assert rates.take("other", 10.0, now=0.0) == 0  # a key left out of the shares has all of it
    rates.share({})  # all of it again, from the next request on: 0.1 s at 5/s earned half a token
    assert rates.take("k", 10.0, now=0.1) == pytest.approx(0.05)  # the other half at 10/s
    assert rates.take("k", 10.0, now=0.16) == 0


def test_demand_counts_what_was_asked_admitted_or_not_and_starts_again() -> None:
    rates = KeyRates()
    start = rates.demand(now=100.0)  # (what came before: nothing)
    assert start == {}
    for _ in range(30):
        rates.take("k", 5.0, now=100.5)
    rates.take("j", 5.0, now=101.0)
    assert rates.demand(now=102.0) == {"k": 15.0, "j": 0.5}
    assert rates.demand(now=103.0) == {}


def test_shares_follow_what_each_server_was_asked() -> None:
    assert shares({"k": 30.0}, {"k": (10.0, 1)}) == {"k": 0.75}
    assert shares({"k": 10.0}, {"k": (30.0, 2)}) == {"k": 0.25}
    # asked nothing of it here yet: an equal part with the servers that were
    assert shares({}, {"k": (40.0, 3)}) == {"k": 0.25}
    # a key only this server was asked keeps all of its rate (it is left out)
    assert shares({"mine": 5.0}, {}) == {}


# -- the cluster's rounds -----------------------------------------------------------------------
def test_two_servers_split_a_keys_rate_by_what_each_was_asked(db: Database) -> None:
    a, b = Server(db, "a"), Server(db, "b")
    a.share({"k": 30.0, "only-a": 4.0})
    b.share({"k": 10.0})
    a.share({"k": 30.0, "only-a": 4.0})  # now a reads b's row too
    assert a.rates.shares == {"k": 0.75}
    assert b.rates.shares == {"k": 0.25, "only-a": 0.5}  # (an equal part, should it be asked)
    # a key of rate 20: 15/s here, 5/s there, a bucket of one second each
    assert a.ask("k", 20.0, 30, now=10.0) == 15
    assert b.ask("k", 20.0, 30, now=10.0) == 5
    assert a.ask("only-a", 20.0, 30, now=10.0) == 20


def test_a_server_writes_its_demand_when_it_changes_and_on_the_heartbeat(db: Database) -> None:
    a = Server(db, "a")
    a.share({"k": 12.3456}, now=1.0)
    assert _rows(db) == {"a": {"k": 12.3}}  # three significant figures
    with db.read() as s:
        first = s.scalar(select(KeyDemandRow.updated_at))
    a.share({"k": 12.34}, now=2.0)  # the same, rounded: not written
    with db.read() as s:
        assert s.scalar(select(KeyDemandRow.updated_at)) == first
    a.share({"k": 12.34}, now=7.0)  # the heartbeat
    with db.read() as s:
        assert s.scalar(select(KeyDemandRow.updated_at)) > first
    a.share({"k": 50.0}, now=7.5)
    assert _rows(db) == {"a": {"k": 50.0}}
    a.share({}, now=8.0)  # asked nothing: its row goes
    assert _rows(db) == {}
    a.share({}, now=20.0)
    assert _rows(db) == {}


def test_a_dead_servers_demand_stops_counting_and_goes_and_a_leaving_one_at_once(db: Database) -> None:
    a, b, c = Server(db, "a"), Server(db, "b"), Server(db, "c")
    a.share({"k": 10.0})
    b.share({"k": 10.0})
    c.share({"k": 20.0})
    assert c.rates.shares == {"k": 0.5}
    with db.transaction() as s:  # a died: its row ages past LIVE_S
        s.execute(update(KeyDemandRow).where(KeyDemandRow.server_id == "a")
                  .values(updated_at=utcnow() - timedelta(seconds=LIVE_S + 1)))
    c.share({"k": 20.0}, now=1.0)
    assert c.rates.shares == {"k": pytest.approx(2 / 3)}
    b.cluster.leave()
    c.share({"k": 20.0}, now=2.0)
    assert c.rates.shares == {}  # alone now: all of it
    assert set(_rows(db)) == {"a", "c"}
    with db.transaction() as s:  # long dead
        s.execute(update(KeyDemandRow).where(KeyDemandRow.server_id == "a")
                  .values(updated_at=utcnow() - timedelta(seconds=FORGET_S + 1)))
    fresh = Server(db, "d")
    fresh.share({})  # any server's round removes it
    assert set(_rows(db)) == {"c"}


def test_another_servers_unreadable_row_is_left_out_and_said_once(
    db: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = Server(db, "a"), Server(db, "b")
    a.share({"k": 10.0})
    for damage in ({"k": "fast"}, ["k"], {"k": -1.0}, {"k": True}):
        with db.transaction() as s:  # another version of the code, or damage
            s.execute(update(KeyDemandRow).where(KeyDemandRow.server_id == "a").values(demand=damage))
        with caplog.at_level("WARNING", logger="modelyard.core.cluster_rates"):
            b.share({"k": 10.0})
        assert b.rates.shares == {}, damage
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert said == ["left out the unreadable key demand of server a"]


def test_the_servers_rounds_share_what_was_asked_as_it_was_asked(db: Database) -> None:
    """``follow`` as a server runs it: each round takes what was asked since the last one, writes
    it, and runs the keys at the shares it read."""
    a, b = Server(db, "a"), Server(db, "b")
    b.share({"k": 30.0})  # b was asked 30/s of k

    async def rounds() -> None:
        task = asyncio.create_task(a.cluster.follow(0.02))
        for _ in range(250):
            a.rates.take("k", 100.0)  # a is asked too
            await asyncio.sleep(0.004)
            if "k" in a.rates.shares:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(rounds())
    share = a.rates.shares["k"]
    assert 0 < share < 1
    assert "a" in _rows(db) and _rows(db)["a"]["k"] > 0
    a.cluster.leave()
    assert set(_rows(db)) == {"b"}
