"""The fednode daemon: a py-libp2p node that gossips signed commits and exchanges blocks."""
