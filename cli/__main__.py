"""``python -m cli``: the fednode command line."""

from cli.main import main

main()
