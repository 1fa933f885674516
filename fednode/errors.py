"""The one exception type users see: its message is the one-line error the CLI prints."""

import re


def printable(text: str, limit: int = 300) -> str:
    """``text`` as it may be stored and printed: every control character (a terminal's escape
    sequences from a hostile peer or service) replaced by "?", at most ``limit`` characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's message for a one-line error: its first line (its type when it has none),
    terminal escapes and other control characters removed, at most ``limit`` characters."""
    lines = str(exc).splitlines()
    text = lines[0] if lines and lines[0].strip() else type(exc).__name__ if isinstance(exc, BaseException) else ""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # ANSI colours (torch bolds its messages)
    return printable(text, limit)


class FednodeError(Exception):
    """A user-facing failure; nothing was stored when it is raised."""


class NotFound(FednodeError):
    """An unknown revision, repository, branch or block."""


class Corrupt(FednodeError):
    """Stored or received bytes that fail verification."""
