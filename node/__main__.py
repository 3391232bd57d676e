"""`python -m node`: the `blyan` command line."""

from node.cli.main import main

main()
