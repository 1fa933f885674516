"""On-chain anchoring commands (``fednode anchor``, ``chain``, ``members``, ``devchain``)."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this module's commands to the ``fednode`` group."""
