"""Example training scripts for ``fednode train`` (PyTorch and framework-free)."""
