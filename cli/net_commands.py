"""Network commands (``fednode daemon``, ``status``, ``peers``, ``push``, ``pull``, ``clone``, ``follow``)."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this module's commands to the ``fednode`` group."""
