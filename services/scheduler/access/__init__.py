"""The scheduler's side of access control: the tables, the authority, ``vigil.v1.Access``."""
