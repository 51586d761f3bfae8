"""`python -m heartml` runs the CLI."""

from heartml.cli import main

main()
