"""How big a run is: ``full`` (documented in docs/benchmarks.rst) or ``quick`` (CI, seconds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    name: str
    categories: int
    products: int
    reviews_per_product: int  # on average; popular products get more
    zipf_s: float  # product popularity: P(rank k) ~ 1 / k**s
    clients: int  # concurrent client threads in the shop traffic and correctness runs
    # Shop traffic: every client sends the same requests with every contender (seeded), so
    # hit rates compare like with like; the first ones warm the cache up unmeasured.
    mixed_warmup: int  # requests per client before measuring
    mixed_requests: int  # requests per client measured, per read/write mix
    fanout_sizes: tuple[int, ...]  # entries depending on the one saved product
    bulk_rows: tuple[int, ...]  # rows of one QuerySet.update(), per run
    bulk_bystanders: int  # cached pages of rows the update does not touch
    correctness_seconds: float
    correctness_hot: int  # products the correctness run reads and writes
    micro_iterations: int  # saves and hits timed per side
    events_single: int  # events published one per transaction
    events_batched: int  # events published batch_size per transaction
    batch_size: int
    seed: int = 6

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Scale(
    name="full", categories=100, products=20_000, reviews_per_product=3, zipf_s=1.1, clients=4,
    # 300 rows: an update of the shop whose event stays under MAX_TAGS_PER_EVENT (1,000 tags:
    # two per row and one per category foreign key; 400 rows make 1,001); 10,000 rows:
    # escalated to the model's coarse tag by storm control.
    mixed_warmup=1_000, mixed_requests=5_000, fanout_sizes=(10, 1_000, 100_000),
    bulk_rows=(300, 10_000),
    bulk_bystanders=1_000, correctness_seconds=20.0, correctness_hot=20,
    micro_iterations=2_000, events_single=2_000, events_batched=20_000, batch_size=100,
)

QUICK = Scale(
    name="quick", categories=20, products=1_000, reviews_per_product=3, zipf_s=1.1, clients=4,
    mixed_warmup=50, mixed_requests=150, fanout_sizes=(10, 100), bulk_rows=(100,),
    bulk_bystanders=30, correctness_seconds=0.6, correctness_hot=10,
    micro_iterations=100, events_single=30, events_batched=600, batch_size=50,
)

SCALES = {"full": FULL, "quick": QUICK}
