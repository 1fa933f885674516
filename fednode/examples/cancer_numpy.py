#!/usr/bin/env python3
"""Framework-free training for ``fednode train --script`` (no torch: numpy + safetensors).

Contract of an executable training script: it is run as
``SCRIPT HEAD.safetensors OUT.safetensors`` with $FEDNODE_EPOCHS, $FEDNODE_SEED and
$FEDNODE_METRICS (a path for a JSON object of metrics, with "samples" for the
number of training examples). It reads the head, trains, and writes the new
weights with the same names, shapes and dtypes. Any language or framework works.

This one trains the same 30-16-2 MLP as cancer_torch.py with hand-written
backpropagation, so PyTorch and non-PyTorch hospitals share one repository.
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from fednode.examples.cancer_data import current_site, site_split


def forward(w, x):
    h = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0.0)
    return h, h @ w["2.weight"].T + w["2.bias"]


def softmax_xent(logits, y):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    p[np.arange(len(y)), y] -= 1.0
    return loss, p / len(y)


def main() -> None:
    head, out = sys.argv[1], sys.argv[2]
    epochs = int(os.environ.get("FEDNODE_EPOCHS", "1"))
    rng = np.random.default_rng(int(os.environ.get("FEDNODE_SEED", "0")))
    w = {k: v.astype(np.float32) for k, v in load_file(head).items()}
    x, y, xh, yh = site_split(current_site())
    lr, batch = 0.05, 32
    loss = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            h, logits = forward(w, x[idx])
            loss, g = softmax_xent(logits, y[idx])
            gh = (g @ w["2.weight"]) * (h > 0)
            grads = {"2.weight": g.T @ h, "2.bias": g.sum(0), "0.weight": gh.T @ x[idx], "0.bias": gh.sum(0)}
            for k in grads:
                w[k] = (w[k] - lr * grads[k]).astype(np.float32)
    _, logits = forward(w, xh)
    heldout_loss, _ = softmax_xent(logits, yh)
    accuracy = float((logits.argmax(1) == yh).mean())
    save_file(w, out)
    with open(os.environ["FEDNODE_METRICS"], "w") as fh:
        json.dump({"loss": float(heldout_loss), "accuracy": accuracy, "samples": int(len(y))}, fh)


if __name__ == "__main__":
    main()
