"""scikit-learn's bundled 8x8 handwritten digits: the embedded dataset that needs no download.

1,797 real images with values 0..16, scaled to uint8 0..255 and split once 75/25, stratified by class,
with a fixed seed, so every run and machine sees the same train and test sets.
"""

from __future__ import annotations

import numpy as np
import torch

from kdlab.data.memory import InMemoryDataset, as_uint8_images

__all__ = ["load_digits", "digits_split", "DIGITS_MEAN", "DIGITS_STD", "SPLIT_SEED", "TEST_SIZE"]

SPLIT_SEED = 0
TEST_SIZE = 0.25
# Pixel mean/std of the fixed train split after scaling to 0..1 (1,347 images; computed once with
# digits_split() and checked by the tests).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3758,)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 images N x 8 x 8, labels, sorted train positions, sorted test positions) of the fixed split."""
    from sklearn.datasets import load_digits as sk_load_digits  # local: sklearn import is slow
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.rint(bunch.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train, test = train_test_split(np.arange(labels.size), test_size=TEST_SIZE, random_state=SPLIT_SEED,
                                   stratify=labels)
    return images, labels, np.sort(train), np.sort(test)


def load_digits(train: bool = True) -> InMemoryDataset:
    """The train (1,347) or test (450) split of the digits, 1 x 8 x 8 uint8, no augmentation by default."""
    images, labels, train_pos, test_pos = digits_split()
    pos = train_pos if train else test_pos
    return InMemoryDataset(
        name="digits", images=as_uint8_images(images[pos], (-1, 1, 8, 8)), targets=torch.from_numpy(labels[pos]),
        num_classes=10, class_names=[str(i) for i in range(10)], mean=DIGITS_MEAN, std=DIGITS_STD, train=train,
        source="sklearn.datasets.load_digits",
    )
