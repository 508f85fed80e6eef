"""Webhooks: every matching event POSTed at least once, surviving restarts.

Each hook has a **durable JetStream consumer** on ``VIGIL_EVENTS``
(``vigil-hook-<id>``), created with the hook (delivering events published
from then on): the consumer *is* the hook's cursor, kept by NATS across
restarts of this service (:mod:`.cursor`). A runner task per hook
(:mod:`.delivery`) pulls from it, filters in-process (``filter_subject``
cannot express globs or locations), acknowledges what does not match, and
POSTs the rest, at most ``hook_max_in_flight`` at a time. An event is
acknowledged only once the receiver answered 2xx, or once the delivery was
parked as failed in the store: a crash or restart in between makes JetStream
redeliver it (after ``hook_ack_wait``), hence *at least once*.

A POST carries the event's JSON (exactly as published on NATS) and the
headers ``X-Vigil-Event-Id``, ``X-Vigil-Event-Sequence``, ``X-Vigil-Hook-Id``,
``X-Vigil-Attempt`` and ``X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the
body keyed by the hook's secret>`` (:mod:`.signing`). Failures (timeout,
connection error, any non-2xx, a redirect, which is never followed, a target
the guard refuses) are retried with exponential back-off and jitter until
``hook_max_age`` after the event was published; then the delivery is parked
in ``hook_failures`` (``ListHookFailures``) and the cursor moves on. What a
hook's status and its parked deliveries show is a generic failure class
(``HTTP 503``, ``connection failed``, ``timeout``, ``address not allowed``, …),
never the receiver's text.

A hook cannot be aimed inward (loopback, private, link-local, metadata
addresses…): :mod:`.guard` checks its URL when it is created or updated and
every connection of every delivery, so DNS rebinding gets nowhere either.

Every hook has its own task, HTTP session and connection pool, so a slow or
dead receiver only ever holds up its own deliveries. :mod:`.manager` creates,
lists and deletes hooks (validated by :mod:`.validation`) and runs their
runners.
"""
