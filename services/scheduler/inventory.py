"""From configuration to service specs: resolves defaults and the TTL."""

from __future__ import annotations

from services.common.config import ServiceConfig, VigilConfig
from services.scheduler.model import ServiceKey, ServiceSpec


def resolve_ttl(cfg: VigilConfig, location: str, svc: ServiceConfig, interval: float) -> float:
    """TTL precedence: the service's ``ttl``, else its own ``interval``, else the
    location's ``ttl``, else the global default ``ttl``, else the effective interval.

    A request never lives longer than one interval by default, so a service
    cannot pile up requests, and an expired request turns UNKNOWN before the
    next one is due.
    """
    if svc.ttl is not None:
        return svc.ttl
    if svc.interval is not None:
        return svc.interval
    loc = cfg.locations.get(location)
    if loc is not None and loc.ttl is not None:
        return loc.ttl
    if cfg.defaults.ttl is not None:
        return cfg.defaults.ttl
    return interval


def build_specs(cfg: VigilConfig) -> dict[ServiceKey, ServiceSpec]:
    """Every monitored service the configuration declares."""
    specs: dict[ServiceKey, ServiceSpec] = {}
    d = cfg.defaults
    for node in cfg.nodes:
        for itf in node.interfaces:
            for svc in itf.services:
                key = ServiceKey(node.id, str(itf.ip), svc.name)
                interval = svc.interval if svc.interval is not None else d.interval
                specs[key] = ServiceSpec(
                    key=key,
                    location=node.location,
                    monitor=svc.monitor,
                    params=dict(svc.params),
                    interval=interval,
                    timeout=svc.timeout if svc.timeout is not None else d.timeout,
                    retries=svc.retries if svc.retries is not None else d.retries,
                    ttl=resolve_ttl(cfg, node.location, svc, interval),
                    node_label=node.label,
                )
    return specs
