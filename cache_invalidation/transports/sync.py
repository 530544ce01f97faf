"""``TRANSPORT = "sync"``: apply right after commit, in the process that made the change.

Good for development and for sites without Celery. No retries: if the cache is unreachable the
failure is logged at ERROR, sent as ``invalidation_failed`` and written to the dead-letter
queue for replay; the request still succeeds.
"""

from __future__ import annotations

from .. import signals
from ..apply import apply_events, report_failure
from ..events import InvalidationEvent
from . import published


class SyncTransport:
    name = "sync"

    def publish(self, events: list[InvalidationEvent]) -> None:
        signals.invalidation_published.send(sender=None, events=events, transport=self.name)
        published(events, self.name)
        try:
            apply_events(events)
        except Exception as exc:
            from .. import deadletter
            from ..backends import PartialInvalidation
            from ..models import DeadLetter

            report_failure(events, exc, stage="apply", will_retry=False)
            if isinstance(exc, PartialInvalidation):
                deadletter.record(
                    events,
                    DeadLetter.Reason.APPLY_FAILED,
                    exc.__cause__ or exc,
                    tags=(),
                    keys=(),
                    drains=exc.drains,
                )
            else:
                deadletter.record(events, DeadLetter.Reason.APPLY_FAILED, exc)
