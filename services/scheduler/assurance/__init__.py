"""The scheduler's assurance logic: poll results in, service state, outages and events out.

* :mod:`.keeper`: the mailbox and the single task that applies it;
* :mod:`.rules`: the per-service rules (confirmation, flapping, last poll);
* :mod:`.node_outage`: critical services, interface and node outages;
* :mod:`.transitions`: what the rules decide, as typed values;
* :mod:`.eventbuild`: the events the transitions carry;
* :mod:`.persist`: writing transitions to the store, with retry;
* :mod:`.housekeeping`: the flusher, the stale sweeper, the results pruner;
* :mod:`.lifecycle`: restore at start-up, forget and retire removed services.
"""
