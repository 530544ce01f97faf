"""Concurrency: random interleavings of writes, reads, outages, redeliveries and replays, and
threads reading while others write, never leave a stale entry once the invalidation applied.

The state machine drives the real thing: model saves through the sync transport, reads through
``tagged_cache.get_or_set`` computing from the database, a private redis-server stopped,
started and restarted empty, batches applied again (redelivered) and dead letters replayed.
"""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.db import connection
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cache_invalidation import TaggedCache, deadletter, no_invalidation, signals
from cache_invalidation.apply import apply_events
from cache_invalidation.models import DeadLetter
from testproject.shop.models import Category, Product
from tests.faults import examples, row
from tests.test_reliability_faults import cache_settings, page_key, view, wipe

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PRODUCTS = 3


@row("Random interleavings: writes, reads, outages, restarts empty, redeliveries, replays",
     "a Hypothesis state machine (RuleBasedStateMachine) over a private redis-server: saves, "
     "get_or_set reads, a read racing a write, stop/start, restart without data, a batch "
     "applied again, replay of the dead letters, in random order",
     "whenever Redis is up and no dead letter is pending, and after draining (recover and "
     "replay) at the end, every cached entry equals the database; reads during an outage "
     "raise instead of serving stale data")
def test_random_interleavings_end_consistent(interleavings):
    run_state_machine_as_test(interleavings, settings=hypothesis_settings(
        max_examples=examples(8), stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow], database=None,
    ))


@pytest.fixture
def interleavings(settings: Any, private_redis: Any) -> type:
    settings.CACHES = {**settings.CACHES, "private": cache_settings(private_redis.url)}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync", "CACHE_ALIAS": "private"}
    cache = TaggedCache("private")
    admin = redis.Redis(port=private_redis.port)

    class Interleavings(RuleBasedStateMachine):
        """The model: Redis is up or down; the batches published so far."""

        @initialize()
        def fresh_shop(self) -> None:
            if private_redis.process is None:
                private_redis.start()
            admin.flushall()  # the test's own redis-server: each example starts empty
            DeadLetter.objects.all().delete()
            with no_invalidation():
                Product.objects.all().delete()
                category = Category.objects.get_or_create(name="Lamps", slug="lamps")[0]
                self.pks = [Product.objects.create(name="0", price=Decimal("1"),
                                                   category=category).pk
                            for _ in range(PRODUCTS)]
            self.up = True
            self.version = 0
            self.batches: list[list[Any]] = []
            signals.invalidation_published.connect(self._published, dispatch_uid="machine")

        def _published(self, events: list[Any], **kwargs: Any) -> None:
            self.batches.append(list(events))

        def teardown(self) -> None:
            try:
                if hasattr(self, "pks"):
                    self.drain()
                    self.assert_consistent()
            finally:
                signals.invalidation_published.disconnect(dispatch_uid="machine")

        # -- helpers ---------------------------------------------------------------------
        def stored(self, pk: int) -> str:
            return Product.objects.get(pk=pk).name

        def pending(self) -> bool:
            return deadletter.pending().exists()

        def assert_consistent(self) -> None:
            for pk in self.pks:
                assert cache.get(page_key(pk)) in (None, self.stored(pk)), pk
                assert view(cache, pk) == self.stored(pk)

        def drain(self) -> None:
            if not self.up:
                private_redis.start()
                self.up = True
            result = deadletter.replay(deadletter.pending().values_list("pk", flat=True))
            assert result.failed == {}

        # -- rules -----------------------------------------------------------------------
        @rule(index=st.integers(0, PRODUCTS - 1))
        def write(self, index: int) -> None:
            self.version += 1
            product = Product.objects.get(pk=self.pks[index])
            product.name = str(self.version)
            product.save()  # Redis down: the batch becomes a dead letter
            assert self.pending() or self.up

        @rule(index=st.integers(0, PRODUCTS - 1))
        def read(self, index: int) -> None:
            pk = self.pks[index]
            if not self.up:
                with pytest.raises(redis.ConnectionError):
                    view(cache, pk)
                return
            value = view(cache, pk)
            if not self.pending():
                assert value == self.stored(pk)

        @precondition(lambda self: self.up)
        @rule(index=st.integers(0, PRODUCTS - 1),
              restart=st.sampled_from(["no restart", "restart empty, then write",
                                       "write, then restart empty"]))
        def read_racing_a_write(self, index: int, restart: str) -> None:
            """The value is computed from the old row, and the write commits (and is
            invalidated) before the value is stored, maybe with Redis restarted empty in
            between: it must not be stored."""
            pk = self.pks[index]
            cache.delete(page_key(pk))

            def compute() -> str:
                old = self.stored(pk)
                self.version += 1
                product = Product.objects.get(pk=pk)
                product.name = str(self.version)
                if restart == "restart empty, then write":
                    wipe(private_redis)
                product.save()
                if restart == "write, then restart empty":
                    wipe(private_redis)
                return old

            old = cache.get_or_set(page_key(pk), compute, tags=[f"product:{pk}"])
            assert old != self.stored(pk)
            assert cache.get(page_key(pk)) is None

        @precondition(lambda self: self.up)
        @rule()
        def redis_goes_down(self) -> None:
            private_redis.stop()
            self.up = False

        @precondition(lambda self: not self.up)
        @rule()
        def redis_comes_back(self) -> None:
            private_redis.start()  # with its append-only file: nothing lost
            self.up = True

        @precondition(lambda self: self.up)
        @rule()
        def redis_restarts_empty(self) -> None:
            wipe(private_redis)

        @precondition(lambda self: self.up and bool(self.batches))
        @rule(data=st.data())
        def redeliver(self, data: st.DataObject) -> None:
            batch = data.draw(st.sampled_from(self.batches))
            apply_events(batch)  # a duplicate delivery: skipped, or deletes again

        @rule()
        def replay(self) -> None:
            ids = list(deadletter.pending().values_list("pk", flat=True))
            result = deadletter.replay(ids)
            if self.up:
                assert result.failed == {}
            else:
                assert sorted(result.failed) == sorted(ids)

        @invariant()
        def consistent_when_nothing_is_pending(self) -> None:
            if getattr(self, "up", False) and not self.pending():
                for pk in self.pks:
                    assert cache.get(page_key(pk)) in (None, self.stored(pk)), pk

    return Interleavings


@pytest.mark.skipif("connection.vendor != 'postgresql'",
                    reason="concurrent writers need row-level locking (SQLite locks the file)")
@row("Threaded readers and writers (PostgreSQL)",
     "2 writer threads save 4 products 40 times each through the sync transport while 4 "
     "reader threads read them through get_or_set as fast as they can",
     "zero stale reads: a read that starts after a save returned (its invalidation applied) "
     "never returns an older version; at the end every entry equals the database")
def test_threaded_readers_never_see_stale_after_the_invalidation(settings):
    settings.CACHE_INVALIDATION = {"TRANSPORT": "sync"}
    cache = TaggedCache("default")
    with no_invalidation():
        category = Category.objects.create(name="Lamps", slug="lamps")
        pks = [Product.objects.create(name="0", price=Decimal("1"), category=category).pk
               for _ in range(4)]
    applied = dict.fromkeys(pks, 0)  # the last version whose save (and invalidation) returned
    writes = 40
    done = threading.Event()
    stale: list[tuple[int, int, int]] = []
    reads: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(mine: list[int]) -> None:

        try:
            start.wait()
            for version in range(1, writes + 1):
                for pk in mine:
                    product = Product.objects.get(pk=pk)
                    product.name = str(version)
                    product.save()
                    applied[pk] = version
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def reader(seed: int) -> None:

        rng = random.Random(seed)
        count = 0
        try:
            start.wait()
            while not done.is_set():
                pk = rng.choice(pks)
                floor = applied[pk]
                seen = int(view(cache, pk))
                if seen < floor:
                    stale.append((pk, seen, floor))
                count += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            reads.append(count)
            connection.close()

    writers = [threading.Thread(target=writer, args=(pks[i::2],)) for i in range(2)]
    readers = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    started = time.monotonic()
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join(60)
    done.set()
    for thread in readers:
        thread.join(60)
    assert errors == []
    assert stale == []
    assert sum(reads) > 100, (reads, time.monotonic() - started)
    for pk in pks:
        assert cache.get(page_key(pk)) in (None, str(writes))
        assert view(cache, pk) == str(writes)
