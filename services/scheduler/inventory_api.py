"""``vigil.v1.Inventory``: nodes, interfaces and monitored services over gRPC."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from vigil.v1 import inventory_pb2, inventory_pb2_grpc

from services.core import paging
from services.core.access.principal import Visibility, caller
from services.core.access.visibility import describe
from services.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from services.core.grpcerrors import handle_errors
from services.core.params.secrets import mask_params, restore_params
from services.core.timeutil import from_duration, request_timestamp, set_timestamp, to_duration
from services.scheduler.assurance.keeper import StateKeeper
from services.scheduler.inventory import (
    API,
    Inventory,
    InventoryError,
    NodeEntry,
    ReadOnlyNode,
    Slots,
)
from services.scheduler.policy import DEFAULT_POLICY

Ctx = grpc.aio.ServicerContext[Any, Any]
BUSY = "the scheduler did not apply the change within 30s (is the store reachable?); retry"
INVENTORY = "vigil.v1.Inventory"


def visibility(method: str) -> Visibility:
    """The caller's visibility through ``vigil.v1.Inventory/<method>``."""
    return caller().visibility(f"{INVENTORY}/{method}")


def sees(vis: Visibility, entry: NodeEntry | None) -> bool:
    """Whether ``entry`` (a node, possibly missing) lies inside ``vis``."""
    return entry is not None and (vis.unrestricted or vis.sees(entry.node.location, entry.node.id))


def node_document(node: inventory_pb2.Node) -> dict[str, Any]:
    """A Node message as the document the configuration schema validates."""
    doc: dict[str, Any] = {"id": node.id, "label": node.label, "interfaces": []}
    if node.location:
        doc["location"] = node.location
    if node.foreign_id:
        doc["foreign_id"] = node.foreign_id
    for itf in node.interfaces:
        services = []
        for svc in itf.services:
            entry: dict[str, Any] = {"name": svc.name}
            if svc.monitor:
                entry["monitor"] = svc.monitor
            if svc.HasField("params"):
                entry["params"] = json_format.MessageToDict(svc.params)
            for name in ("interval", "timeout", "ttl"):
                if svc.HasField(name):
                    entry[name] = from_duration(getattr(svc, name))
            if svc.HasField("retries"):
                entry["retries"] = svc.retries
            services.append(entry)
        doc["interfaces"].append({"ip": itf.ip, "services": services})
    if node.maintenance:
        doc["maintenance"] = [
            {
                "name": w.name or "maintenance",
                "start": _iso(request_timestamp(w.start, "node.maintenance.start")),
                "end": _iso(request_timestamp(w.end, "node.maintenance.end")),
                "weekly": w.weekly,
            }
            for w in node.maintenance
        ]
    return doc


def restore_secrets(doc: dict[str, Any], current: NodeEntry | None) -> None:
    """Put the stored secret back wherever ``doc`` (a PutNode) carries the masked
    ``***`` that GetNode showed, so a read-modify-write keeps the secrets.

    Raises :class:`InvalidArgumentError` for a ``***`` with no stored secret.
    """
    stored: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    if current is not None:
        for itf in current.node.interfaces:
            for svc in itf.services:
                spec = next(
                    (
                        sp
                        for k, sp in current.specs.items()
                        if k.ip == str(itf.ip) and k.service == svc.name
                    ),
                    None,
                )
                monitor = spec.monitor if spec is not None else (svc.monitor or svc.name)
                stored[(str(itf.ip), svc.name)] = (monitor, dict(svc.params or {}))
    for i, itf_doc in enumerate(doc["interfaces"]):
        for j, svc_doc in enumerate(itf_doc["services"]):
            params = svc_doc.get("params")
            if not params:
                continue
            monitor, old = stored.get((itf_doc["ip"], svc_doc["name"]), ("", {}))
            monitor = svc_doc.get("monitor") or monitor or svc_doc["name"]
            where = f"node.interfaces[{i}].services[{j}].params"
            try:
                svc_doc["params"] = restore_params(monitor, params, old, where)
            except ValueError as exc:
                field, _, problem = str(exc).partition(": ")
                raise InvalidArgumentError(field, problem) from None


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def node_message(entry: NodeEntry) -> inventory_pb2.Node:
    """The wire form of a node, with each service's resolved settings.

    Secrets (the schema's ``SecretStr`` fields) are shown as ``***`` in both
    ``params`` and ``resolved.params``; the real values go only to the minions.
    """
    node = entry.node
    msg = inventory_pb2.Node(
        id=node.id,
        label=node.label,
        location=node.location,
        foreign_id=node.foreign_id or "",
        source=inventory_pb2.NODE_SOURCE_API
        if entry.source == API
        else inventory_pb2.NODE_SOURCE_CONFIG,
    )
    for itf in node.interfaces:
        out = msg.interfaces.add(ip=str(itf.ip))
        for svc in itf.services:
            s = out.services.add(name=svc.name, monitor=svc.monitor or "")
            for name in ("interval", "timeout", "ttl"):
                value = getattr(svc, name)
                if value is not None:
                    getattr(s, name).CopyFrom(to_duration(value))
            if svc.retries is not None:
                s.retries = svc.retries
            spec = next(
                (
                    sp
                    for k, sp in entry.specs.items()
                    if k.ip == str(itf.ip) and k.service == svc.name
                ),
                None,
            )
            if svc.params:
                # the resolved monitor names the schema; without a spec (not
                # polled), the service's own or default monitor does
                shown = spec.monitor if spec is not None else (svc.monitor or svc.name)
                s.params.update(mask_params(shown, svc.params))
            if spec is not None:
                policy = spec.policy or DEFAULT_POLICY
                r = s.resolved
                r.monitor = spec.monitor
                r.params.update(mask_params(spec.monitor, spec.params))
                r.interval.CopyFrom(to_duration(spec.interval))
                r.timeout.CopyFrom(to_duration(spec.timeout))
                r.retries = spec.retries
                r.ttl.CopyFrom(to_duration(spec.ttl))
                r.package = policy.package
                r.critical = policy.critical_service == svc.name
    for w in node.maintenance:
        mw = msg.maintenance.add(name=w.name, weekly=w.weekly)
        set_timestamp(mw.start, w.start.timestamp())
        set_timestamp(mw.end, w.end.timestamp())
    return msg


class InventoryServicer(inventory_pb2_grpc.InventoryServicer):
    """Validates completely, then applies inside the state keeper's task.

    A scoped caller (docs/security.md, "Scopes") sees and deletes only the
    nodes of its scope (another is NOT_FOUND, like an unknown one), and puts a
    node only inside it: PERMISSION_DENIED, naming the scope, for a node whose
    new location or id lies outside it, or that exists outside it.
    """

    def __init__(self, inventory: Inventory, scheduler: Slots, keeper: StateKeeper) -> None:
        self.inventory = inventory
        self.scheduler = scheduler
        self.keeper = keeper

    @handle_errors
    async def PutNode(
        self, request: inventory_pb2.PutNodeRequest, context: Ctx
    ) -> inventory_pb2.Node:
        if not request.HasField("node"):
            raise InvalidArgumentError("node", "is required")
        if not request.node.id:
            raise InvalidArgumentError("node.id", "is required")
        vis = visibility("PutNode")
        current = self.inventory.get(request.node.id)
        if current is not None and not sees(vis, current):
            # Node ids are one namespace: this id is taken by a node the caller cannot see.
            raise PermissionDeniedError(
                f"node.id: node {request.node.id} lies outside the caller's scope ({describe(vis)})"
            )
        doc = node_document(request.node)
        restore_secrets(doc, current)
        try:
            node, specs = self.inventory.validate(doc)
        except InventoryError as exc:
            field, _, problem = str(exc).partition(": ")
            raise InvalidArgumentError(field, problem) from None
        if not vis.unrestricted and not vis.sees(node.location, node.id):
            raise PermissionDeniedError(
                f"node.location: a node {node.id} at location {node.location} would lie "
                f"outside the caller's scope ({describe(vis)})"
            )
        try:
            self.inventory.check_writable(node.id)
        except ReadOnlyNode as exc:
            raise FailedPreconditionError(str(exc)) from None
        try:
            entry: NodeEntry = await self.keeper.call(
                lambda: self.inventory.put(node, specs, self.scheduler, self.keeper)
            )
        except TimeoutError:
            raise UnavailableError(BUSY) from None
        return node_message(entry)

    @handle_errors
    async def GetNode(
        self, request: inventory_pb2.GetNodeRequest, context: Ctx
    ) -> inventory_pb2.Node:
        if not request.id:
            raise InvalidArgumentError("id", "is required")
        entry = self.inventory.get(request.id)
        if entry is None or not sees(visibility("GetNode"), entry):
            raise NotFoundError(f"node {request.id} does not exist")
        return node_message(entry)

    @handle_errors
    async def ListNodes(
        self, request: inventory_pb2.ListNodesRequest, context: Ctx
    ) -> inventory_pb2.ListNodesResponse:
        filters = [request.location, request.foreign_id]
        size = paging.page_size(request.page_size)
        after = paging.decode_str(request.page_token, filters)
        vis = visibility("ListNodes")
        ids = sorted(
            node_id
            for node_id, e in self.inventory.entries.items()
            if (not request.location or e.node.location == request.location)
            and (not request.foreign_id or e.node.foreign_id == request.foreign_id)
            and sees(vis, e)
        )
        start = 0 if after is None else next((i for i, n in enumerate(ids) if n > after), len(ids))
        page = ids[start : start + size]
        more = start + size < len(ids)
        return inventory_pb2.ListNodesResponse(
            nodes=[node_message(self.inventory.entries[n]) for n in page],
            next_page_token=paging.encode_token(page[-1], filters) if more and page else "",
            total_size=len(ids),
        )

    @handle_errors
    async def DeleteNode(
        self, request: inventory_pb2.DeleteNodeRequest, context: Ctx
    ) -> inventory_pb2.DeleteNodeResponse:
        if not request.id:
            raise InvalidArgumentError("id", "is required")
        # Outside the caller's scope is answered as unknown, as GetNode answers it.
        if not sees(visibility("DeleteNode"), self.inventory.get(request.id)):
            raise NotFoundError(f"node {request.id} does not exist")
        try:
            self.inventory.check_writable(request.id)
        except ReadOnlyNode as exc:
            raise FailedPreconditionError(str(exc)) from None
        try:
            services, outages = await self.keeper.call(
                lambda: self.inventory.delete(request.id, self.scheduler, self.keeper)
            )
        except TimeoutError:
            raise UnavailableError(BUSY) from None
        except KeyError:
            raise NotFoundError(f"node {request.id} does not exist") from None
        return inventory_pb2.DeleteNodeResponse(services_removed=services, outages_closed=outages)
