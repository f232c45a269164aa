"""Decoding stored events for the folds: `stored_event` reads one from its stored JSON
alone, which costs about half what eventsourcing's mapper does; the mapper reads what it
cannot (readmodel/folding.py `read_events` says which)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification

_META = ("timestamp", "originator_id", "originator_version", "originator_topic")


def event_data(event: Any) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, UUID) else v)
        for k, v in event.__dict__.items()
        if k not in _META
    }


def event_class(aggregate: type[Aggregate], name: str) -> type[Aggregate.Event]:
    """The class `@event(name)` made on the aggregate (an error at import if there is none)."""
    cls = getattr(aggregate, name)
    if not (isinstance(cls, type) and issubclass(cls, Aggregate.Event)):
        raise TypeError(f"{aggregate.__name__}.{name} is not an event class")
    return cls


class Event(NamedTuple):
    """One event as the folds read it (a tuple: made for every event, it costs less)."""

    nid: int  # its notification id: its place in the log
    agg: str  # its aggregate's id
    type: str  # its class's name, as the event histories show it
    at: str  # ISO 8601
    data: dict[str, Any]


_DECODE = json.JSONDecoder().raw_decode


def stored_event(n: Notification, name: str, class_version: int,
                 agg: str | None = None) -> Event | None:
    """The event as the folds read it, from its stored JSON alone: what
    `event_data(mapper.to_domain_event(n))` gives, without building the domain event. None
    where it would not be the same (a transcoded value other than a UUID at the top level,
    one nested, an older class version to upcast): the mapper's way reads those. `agg` is
    str(n.originator_id), where the caller has it."""
    if type(n.originator_id) is not UUID:
        return None
    try:
        text = n.state.decode("utf8")
        data, end = _DECODE(text)  # json.loads(bytes) would cost twice as much
    except (ValueError, RecursionError):  # the mapper fails too, and says why
        return None
    if end != len(text) or type(data) is not dict:
        return None
    stamp = data.pop("timestamp", None)
    if type(stamp) is not dict or len(stamp) != 2 or stamp.get("_type_") != "datetime_iso":
        return None
    if data.pop("class_version", 1) != class_version:
        return None
    data.pop("originator_topic", None)
    transcoded = n.state.count(b'"_type_"') - 1  # besides the timestamp's
    for key, value in data.items() if transcoded else ():
        if type(value) is dict and value.get("_type_") == "uuid_hex" and len(value) == 2:
            data[key] = str(UUID(value["_data_"]))
            transcoded -= 1
    if transcoded:
        return None
    # The mapper's timestamp is datetime.fromisoformat of this string; its isoformat() is
    # the string again.
    return Event(n.id, agg or str(n.originator_id), name, stamp["_data_"], data)
