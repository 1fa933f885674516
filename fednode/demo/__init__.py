"""``make demo``: the network walkthrough (network.py) and the single-node one (walkthrough.py)."""
