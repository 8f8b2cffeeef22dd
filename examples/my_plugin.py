"""An example plugin: your own model and dataset, registered without touching idap.

Name it in a config and every door sees both names (the workflow, the CLI, idap.compress):

    plugins: [examples/my_plugin.py]
    grid: {datasets: [digits_0to4], models: [plain_cnn]}

The dataset is the first five classes of scikit-learn's digits (it ships with the package,
so this runs offline); put your own arrays where ``_arrays`` reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from idap.data.registry import DATASETS, DatasetInfo, DatasetUnavailable, RawTensors
from idap.models.registry import ModelSpec, register_model


# -- the model ---------------------------------------------------------------------------
class PlainCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear classifier, for 8-32 px images."""

    def __init__(self, num_classes: int, in_chans: int, width: int = 32):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(in_chans, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 1)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


register_model(
    ModelSpec(
        name="plain_cnn",
        build=PlainCNN,  # build(num_classes, in_chans) -> nn.Module
        classifier=("classifier",),  # never pruned
        block_types=(),  # no residual blocks: layer truncation has nothing to remove
        feature_taps=("features.0", "features.1", "features.2"),  # recovery distils these
    )
)


# -- the dataset -------------------------------------------------------------------------
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) as uint8 and labels (N,): replace with your own data."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    keep = bunch.target < 5
    return bunch.images[keep].astype(np.uint8), bunch.target[keep].astype(np.int64)


@DATASETS.register("digits_0to4")
class DigitsZeroToFour:
    # name, classes, channels, image side, per-channel mean and std of the [0, 1] pixels
    info = DatasetInfo("digits_0to4", 5, 1, 8, (0.30,), (0.37,))
    scale = 16.0  # the value of a white pixel in the stored arrays

    def prepare(self, d: Path) -> tuple[str, list[Path]]:
        """Write the data under ``d`` (the download stage); returns (source, files)."""
        x, y = _arrays()
        rng = np.random.default_rng(0)  # a fixed test split belongs to the dataset
        order = rng.permutation(len(y))
        n_test = len(y) // 5
        d.mkdir(parents=True, exist_ok=True)
        path = d / "data.npz"
        np.savez(
            path,
            train_x=x[order[n_test:]],
            train_y=y[order[n_test:]],
            test_x=x[order[:n_test]],
            test_y=y[order[:n_test]],
        )
        return "sklearn digits 0-4", [path]

    def load(self, d: Path) -> RawTensors:
        path = d / "data.npz"
        if not path.is_file():
            raise DatasetUnavailable(f"{path} missing; rerun the download stage")
        a = {k: torch.from_numpy(v) for k, v in np.load(path).items()}
        return RawTensors(a["train_x"], a["train_y"], a["test_x"], a["test_y"], self.scale)
