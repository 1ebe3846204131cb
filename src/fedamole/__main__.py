"""``python -m fedamole``."""

from fedamole.cli import main

main()
