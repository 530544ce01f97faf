"""Bulk writes on declared models: ``update()``, ``bulk_create()``, ``bulk_update()``, ``delete()``.

(To be completed.)
"""

from __future__ import annotations


class BulkQuerySetMixin:
    pass
