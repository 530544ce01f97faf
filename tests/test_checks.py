"""Settings checks: each misconfiguration has an id and an exact message."""

from cache_invalidation.checks import check_settings


def ids(settings_value, settings):
    settings.CACHE_INVALIDATION = settings_value
    return [(m.id, m.msg) for m in check_settings()]


def test_defaults_are_clean(settings):
    assert ids({}, settings) == []


def test_unknown_key_with_suggestion(settings):
    settings.CACHE_INVALIDATION = {"MAX_TLL": 5}
    [message] = check_settings()
    assert message.id == "cache_invalidation.E010"
    assert message.msg == "CACHE_INVALIDATION has an unknown key 'MAX_TLL'."
    assert message.hint.startswith("Did you mean 'MAX_TTL'?")


def test_bad_values(settings):
    assert ids({"MAX_TTL": 0, "MAX_RETRIES": -1, "RETRY_BACKOFF": "1"}, settings) == [
        ("cache_invalidation.E010", "CACHE_INVALIDATION['MAX_TTL'] must be a positive integer, got 0."),
        ("cache_invalidation.E010", "CACHE_INVALIDATION['MAX_RETRIES'] must be an integer >= 0, got -1."),
        ("cache_invalidation.E010",
         "CACHE_INVALIDATION['RETRY_BACKOFF'] must be a number of seconds >= 0, got '1'."),
    ]


def test_unknown_cache_alias(settings):
    assert ids({"CACHE_ALIAS": "nope"}, settings) == [
        ("cache_invalidation.E011", "CACHE_INVALIDATION['CACHE_ALIAS'] is 'nope', which is not in CACHES."),
    ]


def test_unknown_transport(settings):
    assert ids({"TRANSPORT": "kafka"}, settings) == [
        ("cache_invalidation.E012", "CACHE_INVALIDATION['TRANSPORT'] is 'kafka'."),
    ]


def test_not_a_dict(settings):
    assert ids(["sync"], settings) == [
        ("cache_invalidation.E010", "CACHE_INVALIDATION must be a dict, not list."),
    ]


def test_ignore_exceptions_warns(settings):
    caches = dict(settings.CACHES)
    caches["swallowing"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/11",
        "OPTIONS": {"IGNORE_EXCEPTIONS": True},
    }
    settings.CACHES = caches
    assert ids({"CACHE_ALIAS": "swallowing"}, settings) == [
        ("cache_invalidation.W001",
         "The cache 'swallowing' sets IGNORE_EXCEPTIONS: plain cache.delete() calls on it report "
         "success when Redis is down."),
    ]


def test_retry_backoff_longer_than_the_visibility_timeout_is_refused(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 600}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "RETRY_BACKOFF_MAX": 900}
    [message] = check_settings()
    assert message.id == "cache_invalidation.E013"
    assert message.msg == (
        "CACHE_INVALIDATION['RETRY_BACKOFF_MAX'] (900 s) is not below the Redis broker's "
        "visibility_timeout (600 s): a retry that waits that long is delivered again to "
        "another worker and runs twice, in a loop."
    )
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "RETRY_BACKOFF_MAX": 300}
    assert check_settings() == []


def test_visibility_timeout_is_irrelevant_for_amqp(settings):
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 10}
    settings.CACHE_INVALIDATION = {"TRANSPORT": "celery", "RETRY_BACKOFF_MAX": 900}
    assert check_settings() == []


def with_cache(settings, alias, **config):
    settings.CACHES = {**settings.CACHES, alias: config}


def test_a_per_process_cache_with_celery_warns(settings):
    with_cache(settings, "mem", BACKEND="django.core.cache.backends.locmem.LocMemCache")
    assert ids({"CACHE_ALIAS": "mem", "TRANSPORT": "celery"}, settings) == [
        ("cache_invalidation.W002",
         "CACHE_INVALIDATION['CACHE_ALIAS'] is 'mem', a LocMemCache, which lives inside each "
         "process, but TRANSPORT is 'celery': the Celery worker applies every invalidation to "
         "its own copy, never to the web processes' caches."),
    ]
    # None picks celery because a broker is configured: the same mistake.
    assert [i for i, _ in ids({"CACHE_ALIAS": "mem"}, settings)] == ["cache_invalidation.W002"]
    assert ids({"CACHE_ALIAS": "mem", "TRANSPORT": "outbox"}, settings) == [
        ("cache_invalidation.W002",
         "CACHE_INVALIDATION['CACHE_ALIAS'] is 'mem', a LocMemCache, which lives inside each "
         "process, but TRANSPORT is 'outbox': the outbox relay (relay_outbox, the beat task) "
         "applies what it delivers to its own copy, never to the web processes' caches."),
    ]
    assert ids({"CACHE_ALIAS": "mem", "TRANSPORT": "sync"}, settings) == []


def test_a_dummy_cache_warns(settings):
    with_cache(settings, "off", BACKEND="django.core.cache.backends.dummy.DummyCache")
    assert ids({"CACHE_ALIAS": "off", "TRANSPORT": "sync"}, settings) == [
        ("cache_invalidation.W003",
         "CACHE_INVALIDATION['CACHE_ALIAS'] is 'off', a DummyCache: it stores nothing, so "
         "every cached value is computed on every request and key patterns cannot be "
         "deleted."),
    ]


def test_a_sharded_redis_client_is_refused(settings):
    with_cache(settings, "sharded", BACKEND="django_redis.cache.RedisCache",
               LOCATION=["redis://127.0.0.1:6379/11", "redis://127.0.0.1:6379/13"],
               OPTIONS={"CLIENT_CLASS": "django_redis.client.ShardClient"})
    assert ids({"CACHE_ALIAS": "sharded"}, settings) == [
        ("cache_invalidation.E014",
         "The cache 'sharded' uses django-redis's ShardClient: the tag index runs one Lua "
         "script over many keys, which cannot span shards."),
    ]


def test_declared_keys_outliving_max_ttl_warn(settings, monkeypatch):
    default = settings.CACHES["default"]
    with_cache(settings, "default", **{**default, "TIMEOUT": None})
    assert ids({}, settings) == [
        ("cache_invalidation.W004",
         "The cache 'default' keeps entries stored without a timeout forever (TIMEOUT is "
         "None), longer than MAX_TTL (3600 s). Declared keys such as 'category:{pk}:listing' "
         "of shop.Category are usually written with plain cache.set(), so a lost "
         "invalidation leaves them stale that long."),
    ]
    with_cache(settings, "default", **{**default, "TIMEOUT": 86400})
    [(_, message)] = ids({}, settings)
    assert message.startswith(
        "The cache 'default' keeps entries stored without a timeout for 86400 s (TIMEOUT), "
        "longer than MAX_TTL (3600 s).")
    assert ids({"MAX_TTL": 86400}, settings) == []
    with_cache(settings, "default", **{**default, "TIMEOUT": 600})
    assert ids({}, settings) == []
    from cache_invalidation.registry import registry

    with_cache(settings, "default", **{**default, "TIMEOUT": None})
    monkeypatch.setattr(registry, "policies", {})  # no declared keys: plain sets do not matter
    assert ids({}, settings) == []
