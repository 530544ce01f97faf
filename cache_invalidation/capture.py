"""Automatic dependency capture. (To be completed.)"""

from __future__ import annotations


class CaptureQuerySetMixin:
    pass
