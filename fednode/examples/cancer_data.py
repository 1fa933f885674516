"""scikit-learn's bundled breast-cancer data (569 patients) split across hospitals, non-IID.

The global test set (20%) is held out from everyone. The rest is sorted by mean tumour
radius and cut into ``n_sites`` contiguous slices, so each hospital sees a different
population (small benign tumours at site 1, large malignant ones at the last site).
Each site keeps 20% of its slice as its own held-out split. Features are standardised
with constants computed once from the training pool (a public preprocessing recipe).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np

N_SITES = 3


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``load_breast_cancer(return_X_y=True)``, read from the CSV it bundles without
    importing scikit-learn (that import costs about a second of CPU in every training process)."""
    spec = importlib.util.find_spec("sklearn")  # locates the package, imports nothing
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / "datasets" / "data" / "breast_cancer.csv"
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            n_samples, n_features = int(rows[0][0]), int(rows[0][1])
            table = np.asarray(rows[1:n_samples + 1], dtype=np.float64)
            return table[:, :n_features], table[:, n_features].astype(int)
    from sklearn.datasets import load_breast_cancer as load

    return load(return_X_y=True)


def _load(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_breast_cancer()
    order = np.random.default_rng(seed).permutation(len(y))
    test, pool = order[:114], order[114:]
    mean, std = x[pool].mean(0), x[pool].std(0) + 1e-8
    x = ((x - mean) / std).astype(np.float32)
    return x, y.astype(np.int64), test, pool


def test_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y, test, _ = _load(seed)
    return x[test], y[test]


def site_split(site: int, n_sites: int = N_SITES, seed: int = 0):
    """(x_train, y_train, x_heldout, y_heldout) of hospital ``site`` (1-based)."""
    if not 1 <= site <= n_sites:
        raise ValueError(f"site must be in 1..{n_sites}")
    x, y, _, pool = _load(seed)
    pool = pool[np.argsort(x[pool, 0], kind="stable")]
    part = np.array_split(pool, n_sites)[site - 1]
    part = part[np.random.default_rng(seed + site).permutation(len(part))]
    cut = int(len(part) * 0.8)
    return x[part[:cut]], y[part[:cut]], x[part[cut:]], y[part[cut:]]


def current_site() -> int:
    """The hospital this process plays, from $FEDNODE_SITE (default 1)."""
    return int(os.environ.get("FEDNODE_SITE", "1"))
