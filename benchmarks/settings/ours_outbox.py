"""django-cache-invalidation, ``TRANSPORT = "outbox"``: one row per event written inside the
transaction, nothing done at commit (``OUTBOX_DELIVER_ON_COMMIT = False``); one relay process
(``manage.py relay_outbox --loop``, see :mod:`benchmarks.outbox_relay`) started by the
benchmark delivers them."""

import os

from . import *  # noqa: F403
from . import INSTALLED_APPS

BENCH_CONTENDER = "ours_outbox"
INSTALLED_APPS = [*INSTALLED_APPS, "cache_invalidation"]
CACHE_INVALIDATION = {"TRANSPORT": "outbox", "OUTBOX_DELIVER_ON_COMMIT": False,
                      "MAIL_ADMINS": False}
# The events workload also measures one relay with storm control's rate limit off.
if os.environ.get("BENCH_MODEL_RATE_LIMIT"):
    CACHE_INVALIDATION["MODEL_RATE_LIMIT"] = int(os.environ["BENCH_MODEL_RATE_LIMIT"])
