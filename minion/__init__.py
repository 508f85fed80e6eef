"""The Vigil minion: a remote executor that dials out to NATS and the scheduler."""

__version__ = "0.1.0"
