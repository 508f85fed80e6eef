"""Prometheus metrics of the scheduler (module-level: one set per process)."""

from prometheus_client import Counter, Gauge, Histogram

POLLS_DISPATCHED = Counter(
    "vigil_scheduler_polls_dispatched_total", "Poll requests published to minions", ["location"]
)
POLLS_SKIPPED = Counter(
    "vigil_scheduler_polls_skipped_total",
    "Due polls not sent because the previous poll of the service was still in flight",
)
POLLS_DEFERRED = Counter(
    "vigil_scheduler_polls_deferred_total",
    "Due polls held back because the in-flight bound (global or per node) was reached",
)
RESULTS = Counter(
    "vigil_scheduler_results_total", "Poll results applied to service state", ["status"]
)
RESULTS_LATE = Counter(
    "vigil_scheduler_results_late_total",
    "Results whose request had already expired or was unknown (counted, ignored)",
)
UNKNOWN = Counter("vigil_scheduler_unknown_total", "Polls that ended UNKNOWN, by cause", ["cause"])
DISPATCH_LAG = Histogram(
    "vigil_scheduler_dispatch_lag_seconds",
    "Delay between a poll's due time and its dispatch",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
IN_FLIGHT = Gauge("vigil_scheduler_polls_in_flight", "Poll requests awaiting a result")
SERVICES = Gauge("vigil_scheduler_services", "Monitored services by assured state", ["status"])
OUTBOX = Gauge("vigil_scheduler_outbox_events", "Events waiting to be handed to the event service")
EVENTS_EMITTED = Counter("vigil_scheduler_events_total", "Events emitted", ["type", "action"])
MINIONS = Gauge("vigil_scheduler_minions", "Connected minions", ["location"])
