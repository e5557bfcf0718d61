"""`python -m gradaudit` runs the CLI."""

from gradaudit.cli import main

main()
