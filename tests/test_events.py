import json

import pytest

from cache_invalidation import InvalidationEvent, InvalidEventError
from cache_invalidation.events import decode_batch, encode_batch


def make_event() -> InvalidationEvent:
    return InvalidationEvent(
        type="shop.Product.updated",
        entity_type="shop.Product",
        entity_id="7",
        tags=("product:7", "category:3:products"),
        keys=("product:7:detail",),
        changed_fields=("price",),
        correlation_id="req-1",
        metadata={"user": 5},
    )


def test_json_round_trip_is_lossless():
    event = make_event()
    wire = json.dumps(event.to_dict())
    assert InvalidationEvent.from_dict(json.loads(wire)) == event


def test_every_event_has_an_id_timestamp_and_schema_version():
    a, b = make_event(), make_event()
    assert a.id != b.id and len(a.id) == 32
    assert a.timestamp > 1_700_000_000
    assert a.to_dict()["version"] == 1


def test_malformed_dict_raises_one_error_naming_every_problem():
    data = make_event().to_dict()
    data["tags"] = "product:7"
    data["timestamp"] = "yesterday"
    del data["id"]
    data["colour"] = "red"
    with pytest.raises(InvalidEventError) as info:
        InvalidationEvent.from_dict(data)
    assert str(info.value) == (
        "malformed invalidation event: unknown field(s): colour; 'id' is required; "
        "'timestamp' must be a number, got 'yesterday'; "
        "'tags' must be a list of non-empty strings"
    )


@pytest.mark.parametrize("payload", [None, "event", 3, ["x"]])
def test_non_objects_are_rejected(payload):
    with pytest.raises(InvalidEventError):
        InvalidationEvent.from_dict(payload)


def test_unknown_schema_version_is_rejected():
    data = make_event().to_dict()
    data["version"] = 99
    with pytest.raises(InvalidEventError, match="'version' 99 is not supported"):
        InvalidationEvent.from_dict(data)


def test_batch_decoding_names_the_bad_entry():
    good = make_event().to_dict()
    with pytest.raises(InvalidEventError, match="event 1: 'type' is required"):
        decode_batch([good, {k: v for k, v in good.items() if k != "type"}])
    assert decode_batch(encode_batch([make_event()]))[0].tags == ("product:7", "category:3:products")
