"""Prometheus metrics of the event service."""

from prometheus_client import Counter, Gauge

INGESTED = Counter(
    "vigil_events_ingested_total", "Raw events normalized and published", ["type", "action"]
)
REJECTED = Counter("vigil_events_rejected_total", "Raw events rejected as invalid", ["field"])
DUPLICATES = Counter("vigil_events_duplicates_total", "Raw events recognised as already published")
SUBSCRIBERS = Gauge("vigil_events_subscribers", "Open Subscribe streams")
SUBSCRIBERS_CUT = Counter(
    "vigil_events_subscribers_cut_total", "Subscribe streams cut off for not reading"
)
HOOK_ATTEMPTS = Counter("vigil_events_hook_attempts_total", "Webhook POST attempts", ["outcome"])
HOOK_PARKED = Counter("vigil_events_hook_parked_total", "Webhook deliveries given up and parked")
SUMMARIES = Counter("vigil_events_summaries_total", "summary events emitted")
