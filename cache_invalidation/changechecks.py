"""System checks for change data capture (``manage.py consume_changes``).

Settings (always): ``E010`` for a bad ``CHANGES_*`` or ``STATUS_MAX_SLOT_LAG`` /
``STATUS_MAX_CHANGES_AGE`` value, as for every other key.
Database (tag ``database``: ``manage.py check --database ALIAS``, ``migrate``), only when the
project configures change data capture (any of those keys set): ``W010`` ``wal_level`` is not
``logical``, ``W011`` a declared table lacks ``REPLICA IDENTITY FULL`` (its UPDATEs and
DELETEs are then invalidated coarsely), ``W012`` WAL kept for the slot is unbounded
(``max_slot_wal_keep_size = -1``: a stopped consumer fills the disk).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connections

from . import changes, replication
from .conf import DEFAULTS, get_config
from .replication import check_name

KEYS = (
    "CHANGES_DATABASE",
    "CHANGES_SLOT",
    "CHANGES_PUBLICATION",
    "CHANGES_BATCH",
    "CHANGES_MARK_TRANSACTIONS",
    "CHANGES_ONLY",
    "STATUS_MAX_SLOT_LAG",
    "STATUS_MAX_CHANGES_AGE",
)


def register() -> None:
    checks.register(check_changes_settings, "cache_invalidation")
    checks.register(check_changes_database, "cache_invalidation", checks.Tags.database)


def _user() -> dict[str, Any]:
    user = getattr(settings, "CACHE_INVALIDATION", None)
    return user if isinstance(user, dict) else {}


def configured() -> bool:
    """Whether the project sets any change data capture key (then the database is checked)."""
    return any(key in _user() for key in KEYS)


def _error(key: str, msg: str) -> checks.CheckMessage:
    return checks.Error(
        f"CACHE_INVALIDATION[{key!r}] {msg}",
        hint=f"The default is {DEFAULTS[key]!r}.",
        id="cache_invalidation.E010",
    )


def check_changes_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    config = {**DEFAULTS, **_user()}
    errors = []
    alias = config["CHANGES_DATABASE"]
    if alias not in getattr(settings, "DATABASES", {}):
        errors.append(_error("CHANGES_DATABASE", f"is {alias!r}, which is not in DATABASES."))
    for key in ("CHANGES_SLOT", "CHANGES_PUBLICATION"):
        try:
            check_name(key, config[key])
        except ValueError as exc:
            errors.append(
                checks.Error(
                    str(exc),
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="cache_invalidation.E010",
                )
            )
    for key in ("CHANGES_MARK_TRANSACTIONS", "CHANGES_ONLY"):
        if not isinstance(config[key], bool):
            errors.append(_error(key, f"must be True or False, got {config[key]!r}."))
    for key in ("STATUS_MAX_SLOT_LAG", "STATUS_MAX_CHANGES_AGE"):
        value = config[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            errors.append(_error(key, f"must be None or a number >= 0, got {value!r}."))
    return errors


def check_changes_database(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    config = get_config()
    alias = config["CHANGES_DATABASE"]
    if not databases or alias not in databases or not configured():
        return []
    if alias not in connections.settings or connections[alias].vendor != "postgresql":
        return []  # E010 or the command says so
    connection = connections[alias]
    found: list[checks.CheckMessage] = []
    try:
        level = replication.setting(connection, "wal_level")
        if level != "logical":
            found.append(
                checks.Warning(
                    f"wal_level is {level!r} on database {alias!r}: manage.py consume_changes "
                    "cannot decode its changes, so writes the ORM does not see (raw SQL, psql, "
                    "other services) are not invalidated.",
                    hint="Set wal_level = logical in postgresql.conf (or the managed "
                    "database's parameter group) and restart the server.",
                    id="cache_invalidation.W010",
                )
            )
        lacking = replication.tables_without_full_identity(connection, changes.tables())
        if lacking:
            found.append(
                checks.Warning(
                    "Declared tables without REPLICA IDENTITY FULL: "
                    + ", ".join(lacking)
                    + "; consume_changes cannot read the old row of their UPDATEs and "
                    "DELETEs and invalidates those models coarsely.",
                    hint="Run manage.py consume_changes --setup (--dry-run shows the SQL).",
                    id="cache_invalidation.W011",
                )
            )
        keep = replication.setting(connection, "max_slot_wal_keep_size")
        if keep in ("-1", None) and replication.slot_info(connection, config["CHANGES_SLOT"]):
            found.append(
                checks.Warning(
                    f"max_slot_wal_keep_size is unbounded on database {alias!r}: while "
                    f"consume_changes is stopped, the slot {config['CHANGES_SLOT']!r} keeps "
                    "every WAL segment until the disk is full.",
                    hint="Set max_slot_wal_keep_size (e.g. '10GB'); a slot past it is "
                    "invalidated, which docs/operations.rst says how to recover from.",
                    id="cache_invalidation.W012",
                )
            )
    except DatabaseError as exc:
        found.append(
            checks.Warning(
                f"Could not check change data capture on database {alias!r}: {exc}",
                id="cache_invalidation.W010",
            )
        )
    return found
