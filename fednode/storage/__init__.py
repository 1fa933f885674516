"""Storage: the LMDB block store, tensor bytes as UnixFS files in it, disk-space reservations."""
