"""Workflows: one module per user-level operation over the history (train, merge, review, checkout, ...)."""
