"""PyTorch training script for ``fednode train --script``.

fednode imports this module, builds ``model()``, loads the branch head into it,
trains on ``data()[0]`` with its own loop (so it can add DP-SGD), evaluates on
``data()[1]`` (this hospital's held-out split) and commits the new weights.
The data never leaves this process; only the weights become a commit.
"""

import torch

from fednode.examples.cancer_data import current_site, site_split

batch_size = 32
lr = 0.05


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def data():
    x, y, xh, yh = site_split(current_site())
    train = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    heldout = torch.utils.data.TensorDataset(torch.from_numpy(xh), torch.from_numpy(yh))
    return train, heldout


def optimizer(params):
    return torch.optim.SGD(params, lr=lr)
