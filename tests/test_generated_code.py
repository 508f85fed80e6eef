"""The checked-in generated code matches the .proto files (run `make proto` when this fails)."""

from pathlib import Path

from services.core.protogen import check


def test_generated_code_is_current() -> None:
    stale = check(Path("protos"))
    assert stale == [], f"stale generated code, run `make proto`: {stale}"
