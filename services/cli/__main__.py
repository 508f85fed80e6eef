"""``python -m services.cli`` is the ``vigil`` command."""

from services.cli.main import main

main()
