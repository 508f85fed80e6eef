"""Prometheus metrics of the event service."""

from prometheus_client import Counter

INGESTED = Counter("vigil_events_ingested_total", "Raw events normalized and published", ["type", "action"])
REJECTED = Counter("vigil_events_rejected_total", "Raw events rejected as invalid", ["field"])
