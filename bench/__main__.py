"""``make bench``: prints throughput and latency figures. Never pass/fail."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys

from bench import blackbox, events, minions, monitors, pipeline, rss, startup
from bench.common import table


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections: pipeline,blackbox,minions,startup,rss,events,monitors",
    )
    ns = parser.parse_args()
    only = {s for s in ns.only.split(",") if s}
    print(
        f"vigil bench — Python {platform.python_version()}, {platform.machine()}, "
        f"cores: {os.cpu_count()}"
    )
    if not only or "pipeline" in only:
        print("\n## pipeline (scheduler → NATS → minion → gRPC → state)")
        rows = asyncio.run(pipeline.main(quick=ns.quick))
        print(table(rows))
        sys.stdout.flush()
    if not only or "blackbox" in only:  # issue 13
        print(
            "\n## blackbox (end-to-end TCP polls/s vs blackbox_exporter's probes/s, same sink, "
            "same cores; then 1x, 2x, 5x Vigil's peak)"
        )
        print(table(asyncio.run(blackbox.main(quick=ns.quick))))
        sys.stdout.flush()
    if not only or "minions" in only:  # issue 6
        print("\n## minions (1, 2, 4 minions at one location, through the real pipeline)")
        print(table(asyncio.run(minions.main(quick=ns.quick))))
        sys.stdout.flush()
    if not only or "startup" in only:
        print("\n## start-up of a large inventory (process start → every service dispatched once)")
        print(table(startup.main(quick=ns.quick)))
        sys.stdout.flush()
    if not only or "rss" in only:  # issue 9: which processes grow with the inventory
        print(
            "\n## rss (MiB per process of `vigil up`: embedded NATS, events, scheduler, minion; "
            "TCP services)"
        )
        print(table(rss.main(quick=ns.quick)))
        sys.stdout.flush()
    if not only or "events" in only:
        print("\n## events (ingest → normalize → NATS + store; webhooks)")
        print(table(asyncio.run(events.main(quick=ns.quick))))
        sys.stdout.flush()
    if not only or "monitors" in only:
        print("\n## monitors (polls/s against local peers)")
        print(table(monitors.rows(ns.quick)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
