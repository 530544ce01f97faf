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
