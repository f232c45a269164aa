"""Aggregate ids are uuid5 of business keys, so a retried command finds the same aggregate."""

from __future__ import annotations

from uuid import UUID, uuid5

NAMESPACE = UUID("6f1d3c1e-8a57-4b8e-9a44-2f0b7f6a9c11")


def business_id(kind: str, key: str) -> UUID:
    return uuid5(NAMESPACE, f"{kind}:{key}")
