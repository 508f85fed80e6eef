"""Property tests of the configuration loader: any bytes in, a ConfigError naming the file or a config out.

Generated YAML (random nested documents, Vigil-shaped documents with random
values), random bytes and the same text in other encodings go through
``read_yaml``, ``load_document`` for each process view, the core's
``load_config`` and the scheduler's ``load_config``. Anything but success or
:class:`ConfigError` naming the file is a bug (issue 10, e.g. defect 2).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from services.core.config import ConfigError, EventsConfig, MinionConfig, load_document
from services.core.config.loader import load_config, read_yaml
from services.scheduler.config import load_config as scheduler_load_config

_DIR = Path(tempfile.mkdtemp(prefix="vigil-config-fuzz-"))

#: Every loader under test, each given only a path (no environment overrides).
LOADERS: dict[str, Callable[[Path], Any]] = {
    "read_yaml": read_yaml,
    "read_yaml(skip nodes)": lambda p: read_yaml(p, skip=frozenset({"nodes", "packages"})),
    "MinionConfig": lambda p: load_document(MinionConfig, p, env={}),
    "EventsConfig": lambda p: load_document(EventsConfig, p, env={}),
    "load_config": lambda p: load_config(p, env={}),
    "scheduler.load_config": lambda p: scheduler_load_config(p, env={}),
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "10s",
            "0.001s",
            "999999999999999999w",
            "600000w",
            "-1s",
            "1e308s",
            "",
            "Default",
            "a b",
            ">",
            "*",
            "127.0.0.1:0",
            "nats://x",
            "300.1.2.3",
            "~",
        ]
    ),
)
keys = st.one_of(
    st.sampled_from(
        [
            "interval",
            "timeout",
            "retries",
            "ttl",
            "name",
            "label",
            "location",
            "ip",
            "address",
            "services",
            "interfaces",
            "monitor",
            "params",
            "downtime",
            "begin",
            "end",
            "url",
            "listen",
            "store_url",
            "system_id",
            "package",
            "critical",
        ]
    ),
    st.text(max_size=12),
)
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
sections = st.sampled_from(
    ["pki", "nats", "scheduler", "events", "minion", "defaults", "locations", "packages", "nodes"]
)
#: Documents shaped like Vigil's: known sections, plausible keys, random values.
vigil_docs = st.dictionaries(sections, trees, max_size=6)
node = st.fixed_dictionaries(
    {"label": scalars, "location": scalars},
    optional={
        "interfaces": st.lists(
            st.fixed_dictionaries(
                {"ip": scalars},
                optional={
                    "services": st.lists(
                        st.fixed_dictionaries(
                            {"name": scalars}, optional={"interval": scalars, "params": trees}
                        ),
                        max_size=3,
                    )
                },
            ),
            max_size=3,
        ),
        "foreign_id": scalars,
    },
)
node_docs = st.fixed_dictionaries(
    {"nodes": st.lists(node, max_size=3)},
    optional={"defaults": st.dictionaries(keys, scalars, max_size=4), "packages": trees},
)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def _check_all(raw: bytes) -> None:
    path = _DIR / "fuzz.yaml"
    path.write_bytes(raw)
    for name, loader in LOADERS.items():
        # Anything but ConfigError propagates and fails the example, naming the loader.
        message = ""
        try:
            loader(path)
        except ConfigError as exc:
            message = str(exc)
        assert not message or str(path) in message, f"{name}: the error names no file: {message}"


@given(trees)
def test_random_yaml_documents(doc: Any) -> None:
    _check_all(_dump(doc).encode())


@given(vigil_docs)
def test_vigil_shaped_documents(doc: Any) -> None:
    _check_all(_dump(doc).encode())


@given(node_docs)
def test_node_documents(doc: Any) -> None:
    _check_all(_dump(doc).encode())


@given(st.binary(max_size=2048))
def test_random_bytes(raw: bytes) -> None:
    _check_all(raw)


@given(
    vigil_docs, st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "utf-8-sig"])
)
def test_other_encodings(doc: Any, encoding: str) -> None:
    text = _dump(doc) + "# é ü ñ — ✓\n"
    _check_all(text.encode(encoding, errors="replace"))


@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    _check_all(text.encode("utf-8", errors="surrogatepass"))
