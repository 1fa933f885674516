"""``python -m cli``: the fednode command line."""

from cli.app import main

main()
