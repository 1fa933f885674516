"""Zero-knowledge foundations (issue 15): Pedersen vector commitments over BN254 G1 and the
FedAvg merge relation checkable from commitments alone. See docs/zk.md.

Modules: ``curve`` (constants, the 64-byte encoding, ``ZkError``), ``generators`` (hash-to-curve
generators from a public seed), ``mcl`` (the native MSM backend), ``pedersen`` (``commit`` and the
point helpers), ``merge_check`` (the remainder relation of a rounded weighted mean).

Layering: this package imports ``protocol``, ``fednode.errors`` and numpy only.
"""

from fednode.zk.curve import ZkError

__all__ = ["ZkError"]
