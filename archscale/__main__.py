"""``python -m archscale`` runs the command line."""

from archscale.cli import main

main()
