"""The ``fednode`` command line: parses, calls fednode, prints."""
