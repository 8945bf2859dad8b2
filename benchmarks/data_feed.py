"""How much the device-resident data feed saves, measured side by side in one run.

    MNIST_ROOT=../shared/data python benchmarks/data_feed.py [--batch-size 32] [--repeats 3]

Times one pass over the 60,000 training images (paper preprocessing, shuffled batches) served
(a) by `lenet5.data.TensorBatches` (tensors preprocessed once, batches by index) and
(b) by torchvision's per-sample pipeline (PIL -> Pad -> ToTensor -> affine map, DataLoader),
then one training pass of the paper network fed by each, and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST

from lenet5.batches import TensorBatches
from lenet5.data import PAPER_BACKGROUND, PAPER_FOREGROUND, load_mnist_split, preprocess
from lenet5.losses import rbf_map_loss
from lenet5.model.lenet5 import LeNet5
from lenet5.presets import compose_config


def per_sample_loader(root: str, batch_size: int) -> DataLoader:
    to_paper_range = transforms.Lambda(lambda x: PAPER_BACKGROUND + x * (PAPER_FOREGROUND - PAPER_BACKGROUND))
    pipeline = transforms.Compose([transforms.Pad(2), transforms.ToTensor(), to_paper_range])
    dataset = MNIST(root, train=True, download=False, transform=pipeline)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)


def time_feed(batches) -> float:
    start = time.perf_counter()
    for images, labels in batches:
        pass
    return time.perf_counter() - start


def time_training(batches, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = LeNet5(compose_config([]).model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    start = time.perf_counter()
    for images, labels in batches:
        loss = rbf_map_loss(model(images), labels, 0.1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = os.environ.get("MNIST_ROOT", "data")
    images, labels = load_mnist_split(root, train=True)
    start = time.perf_counter()
    x = preprocess(images, "paper")
    print(f"one-off preprocessing of 60,000 images: {time.perf_counter() - start:.2f} s")
    tensor_feed = TensorBatches(x, labels, args.batch_size, shuffle=True)
    sample_feed = per_sample_loader(root, args.batch_size)
    # Interleaved repeats: both feeds see the same machine load; the medians are compared.
    feed = {"tensor": [], "per-sample": []}
    train = {"tensor": [], "per-sample": []}
    for _ in range(args.repeats):
        feed["tensor"].append(time_feed(tensor_feed))
        feed["per-sample"].append(time_feed(sample_feed))
    train["tensor"].append(time_training(tensor_feed))
    train["per-sample"].append(time_training(sample_feed))
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    for name, results in (("data feed only", feed), ("training pass", train)):
        t, s = median(results["tensor"]), median(results["per-sample"])
        print(f"{name:15s}: tensor batches {t:7.2f} s, per-sample pipeline {s:7.2f} s, ratio {s / t:6.1f}x "
              f"(batch {args.batch_size}, 60,000 images, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
