"""``TRANSPORT = "celery"``: one Celery task per committed batch, JSON only.

If the broker cannot take the message, the failure is logged at ERROR with the events, sent as
``invalidation_failed`` (stage ``"publish"``) and written to the dead-letter queue; the user's
request still succeeds.
"""

from __future__ import annotations

from typing import Any

from .. import deadletter, signals
from ..apply import report_failure
from ..conf import get_config
from ..events import InvalidationEvent, encode_batch
from ..tasks import apply_batch
from . import BaseTransport, published


class CeleryTransport(BaseTransport):
    name = "celery"

    def publish(self, events: list[InvalidationEvent]) -> None:
        options: dict[str, Any] = {"serializer": "json"}
        queue = get_config()["CELERY_QUEUE"]
        if queue:
            options["queue"] = queue
        try:
            # What Celery logs and shows for the task: without these it builds a saferepr() of
            # the whole batch in the request (a third of apply_async's time).
            options["argsrepr"] = f"<{len(events)} event(s)>"
            options["kwargsrepr"] = "{}"
            apply_batch.apply_async(args=(encode_batch(events),), **options)
        except Exception as exc:
            from ..models import DeadLetter  # noqa: PLC0415 - models need the app registry

            report_failure(events, exc, stage="publish", will_retry=False)
            deadletter.record(events, DeadLetter.Reason.PUBLISH_FAILED, exc)
            return
        published(events, self.name)
        signals.send(signals.invalidation_published, events=events, transport=self.name)
