"""A shim for callers not yet moved: each operation now has its module in ``fednode.workflows``
(checkout, committing, diff, revert, verify, fsck). Import from those; this module goes away once
no caller uses it."""

from fednode.workflows.checkout import CHECKOUT_FILE, CHECKOUT_SUFFIXES, checkout, checkout_path
from fednode.workflows.committing import NothingToCommit, check_commit_source, train
from fednode.workflows.diff import TensorDiff, diff, diff_file
from fednode.workflows.fsck import (
    REFLOG_ROOT_SECONDS,
    FsckReport,
    Marked,
    damaged_blocks,
    fsck,
    gc,
    mark,
    reachable_blocks,
)
from fednode.workflows.revert import revert
from fednode.workflows.verify import VerifyReport, verify

__all__ = [
    "CHECKOUT_FILE", "CHECKOUT_SUFFIXES", "REFLOG_ROOT_SECONDS", "FsckReport", "Marked", "NothingToCommit",
    "TensorDiff", "VerifyReport", "check_commit_source", "checkout", "checkout_path", "damaged_blocks", "diff",
    "diff_file", "fsck", "gc", "mark", "reachable_blocks", "revert", "train", "verify",
]
