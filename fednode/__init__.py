"""fednode: version control for collaborative machine learning on private data."""

__version__ = "0.1.0"
