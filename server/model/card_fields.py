"""Reading a model card's fields: each check names the dotted field it refused (``CardFieldError``).

Shared by the card's sections (``server/model/card.py``, ``server/model/card_subgroups.py``);
``frozen`` and ``thawed`` turn documents into read-only values and back.
"""

from __future__ import annotations

from dataclasses import fields
from types import MappingProxyType
from typing import Any, Mapping


class CardFieldError(ValueError):
    """One field of a card is missing or wrong: ``field`` names it (dotted), the message says how."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name} {problem}")
        self.field = field_name


# ---------------------------------------------------------------- reading fields

def frozen(value: Any) -> Any:
    """JSON data made read-only: dicts -> mapping proxies, lists -> tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """The inverse of ``frozen``: plain dicts and lists, ready for JSON."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thawed(v) for v in value]
    return value


def number(data: Mapping, key: str, where: str, low: float | None = None, high: float | None = None,
           required: bool = False) -> float | None:
    value = data.get(key)
    name = f"{where}{key}"
    if value is None:
        if required:
            raise CardFieldError(name, "is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CardFieldError(name, f"must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise CardFieldError(name, f"must be {bounds}, got {value!r}")
    return value


def text(data: Mapping, key: str, where: str = "", required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise CardFieldError(f"{where}{key}", "is missing")
        return None
    if not isinstance(value, str):
        raise CardFieldError(f"{where}{key}", f"must be text, got {value!r}")
    return value


def section(data: Mapping, key: str) -> Mapping | None:
    value = data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise CardFieldError(key, f"must be an object, got {type(value).__name__}")
    return value


def rest(data: Mapping, cls) -> Mapping:
    """The keys of ``data`` that ``cls`` has no field for, kept as they are."""
    known = {f.name for f in fields(cls)}
    return frozen({k: v for k, v in data.items() if k not in known})


def emit(obj) -> dict:
    """A section back to its JSON shape: fields that are set, then the kept keys."""
    out = {f.name: thawed(getattr(obj, f.name)) for f in fields(obj)
           if f.name != "extra" and getattr(obj, f.name) not in (None, {}, ())}
    return out | thawed(obj.extra)


def count(data: Mapping, key: str, where: str) -> int:
    return int(number(data, key, where, 0) or 0)
