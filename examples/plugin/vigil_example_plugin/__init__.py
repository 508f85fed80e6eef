"""An example third-party Vigil monitor package (see README.md)."""
