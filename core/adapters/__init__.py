"""One adapter per provider kind: provider JSON in, canonical events out.

An adapter module exposes ``KIND``, ``envelope_problem`` (the gateway's 400
check), ``dedup_identity`` (what makes two deliveries the same: the dedup key
and the content digest that tells a retry from a conflict), ``ordering_key``
(the order or transaction a delivery is about: deliveries with the same
ordering key keep their arrival order through every stage) and ``to_events``.
Adapters are pure functions with no Kafka or Faust import, so the gateway can
use ``envelope_problem`` and unit tests need no broker.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from hookline.core.adapters import envelope, partner, payments, vignette_sales
from hookline.core.adapters.fields import Unmappable

ADAPTERS: dict[str, ModuleType] = {
    module.KIND: module for module in (partner, vignette_sales, payments, envelope)
}

__all__ = ["ADAPTERS", "Unmappable", "adapter_for", "envelope_problem", "ordering_key"]


def adapter_for(kind: str) -> ModuleType:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise Unmappable(f"no adapter for kind {kind!r}") from None


def envelope_problem(kind: str, document: dict[str, Any]) -> str | None:
    """Why the body lacks its kind's envelope (e.g. no 'token'), or None when it has it."""
    return adapter_for(kind).envelope_problem(document)


def ordering_key(kind: str, document: dict[str, Any]) -> str:
    """The entity id whose deliveries must keep their arrival order."""
    return adapter_for(kind).ordering_key(document)[:256]
