"""The one exception type users see: its message is the one-line error the CLI prints."""


class FednodeError(Exception):
    """A user-facing failure; nothing was stored when it is raised."""


class NotFound(FednodeError):
    """An unknown revision, repository, branch or block."""


class Corrupt(FednodeError):
    """Stored or received bytes that fail verification."""
