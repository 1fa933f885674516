"""Wire and object formats of fednode: pure data and codecs, no I/O."""
