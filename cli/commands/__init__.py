"""The ``fednode`` commands, one module per group; ``cli.app`` adds them to the click group.

A command module imports ``cli.context`` and the core, never another command module.
"""
