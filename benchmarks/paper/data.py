"""scikit-learn's bundled digits (no download is possible here): 1797 8x8 images.

Split: 20 % test (360), then 10 % of the rest for validation (144; EOI's valid_split 0.1),
1293 for training; stratified, fixed seed; standardised with the training set's statistics.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

Split = tuple[torch.Tensor, torch.Tensor]


@functools.cache
def digits() -> dict[str, Split]:
    """{"train", "val", "test"} -> (x (N, 64) float32, y (N,) long)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.1, stratify=y_rest, random_state=0)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6  # constant pixels (std 0) become 0

    def pack(a: np.ndarray, b: np.ndarray) -> Split:
        a = (a - mean) / std
        return (
            torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32),
            torch.as_tensor(np.ascontiguousarray(b), dtype=torch.long),
        )

    return {"train": pack(x_train, y_train), "val": pack(x_val, y_val), "test": pack(x_test, y_test)}


def steps_per_epoch(batch: int) -> int:
    return math.ceil(digits()["train"][0].shape[0] / batch)


class EpochSampler:
    """Batches of a fresh random permutation each epoch (a shuffling DataLoader, last batch kept)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch = n, batch
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos >= self.order.numel():
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx
