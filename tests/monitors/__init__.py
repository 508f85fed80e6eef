"""Monitor library tests against real peers (fixtures in conftest.py)."""
