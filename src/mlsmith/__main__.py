"""``python -m mlsmith`` is the ``mlsmith`` command."""

from mlsmith.cli import main

main()
