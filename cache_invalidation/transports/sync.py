"""``TRANSPORT = "sync"``: apply right after commit, in the process that made the change.

Good for development and for sites without Celery. No retries: if the cache is unreachable the
failure is logged at ERROR, sent as ``invalidation_failed`` and written to the dead-letter
queue for replay; the request still succeeds.
"""

from __future__ import annotations

from .. import deadletter, metrics, recorder, signals
from ..apply import apply_events, report_failure
from ..backends import PartialInvalidation
from ..events import InvalidationEvent
from . import BaseTransport


class SyncTransport(BaseTransport):
    name = "sync"

    def publish(self, events: list[InvalidationEvent]) -> None:
        recorder.published(events, self.name)
        try:
            self._apply(events)
        finally:
            # After the work it reports (applied, or failed and dead-lettered); a receiver
            # that raises is logged by signals.send and never reaches the user's save().
            signals.send(signals.invalidation_published, events=events, transport=self.name)

    def _apply(self, events: list[InvalidationEvent]) -> None:
        try:
            # Made here, so no id can have been applied before, and none is delivered again:
            # nothing to look up, nothing to mark. Counted as published with the applied.
            apply_events(events, done=set(), published=True, mark=False)
        except Exception as exc:
            if not isinstance(exc, PartialInvalidation):  # else the script counted them
                metrics.record_published(events, self.name)
            report_failure(events, exc, stage="apply", will_retry=False)
            deadletter.record_apply_failure(events, exc)
