"""Schemathesis hooks for the fuzz of the serving API (``SCHEMATHESIS_HOOKS``).

Schema-valid (positive) requests are steered to what the schema cannot state, so that they
reach the success path instead of a correct 422:

- event items must exist: positive events name items of the ml-100k artifact ("1".."1682");
- ``PUT /v1/items`` refuses a batch that names one id twice: positive batches get unique ids;
- JSON Schema counts ``5.0`` as an integer, the API does not (strict types): a positive
  integral float ``k`` is sent as the integer;
- an event time may be at most a day after the server's clock, a bound that moves and so
  is stated in words only: positive event times later than that are sent as now.

Negative requests are left alone: they must be refused as generated."""

from __future__ import annotations

import time

import schemathesis

N_ITEMS = 1682  # ml-100k


def _known_item(i: int, seed: object) -> str:
    return str(1 + (hash((i, str(seed))) % N_ITEMS))


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    label = case.operation.label
    body = case.body
    if label == "POST /v1/recall" and isinstance(body, dict):
        k = body.get("k")
        if isinstance(k, float) and k.is_integer():
            body["k"] = int(k)
    elif label == "POST /v1/events" and isinstance(body, dict):
        for i, event in enumerate(body.get("events", [])):
            if isinstance(event, dict):
                event["item_id"] = _known_item(i, event.get("user_id"))
                stamp = event.get("timestamp")
                if isinstance(stamp, int | float) and stamp > time.time() + 3600:
                    event["timestamp"] = time.time()
    elif label == "PUT /v1/items" and isinstance(body, dict):
        seen: set[str] = set()
        for i, item in enumerate(body.get("items", [])):
            if isinstance(item, dict) and isinstance(item.get("item_id"), str):
                while item["item_id"] in seen:
                    item["item_id"] = f"{item['item_id'][:240]}~{i}"
                seen.add(item["item_id"])
