"""Figures logged with every run: the confusion matrix and the misclassified test digits."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, they never open windows
import matplotlib.pyplot as plt
import numpy as np
import torch


def confusion_matrix_figure(matrix: torch.Tensor, title: str = ""):
    """`matrix` (10, 10): rows true class, columns predicted class, counts."""
    counts = matrix.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 5.4), dpi=110)
    image = ax.imshow(np.log1p(counts), cmap="Blues")
    for true in range(counts.shape[0]):
        for pred in range(counts.shape[1]):
            if counts[true, pred]:
                dark = image.norm(np.log1p(counts[true, pred])) > 0.6
                ax.text(pred, true, int(counts[true, pred]), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(10)), ax.set_yticks(range(10))
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title(title or "test confusion matrix (log colour scale)", fontsize=9)
    fig.tight_layout()
    return fig


def misclassified_figure(images: torch.Tensor, true: torch.Tensor, predicted: torch.Tensor, columns: int = 8):
    """Grid of misclassified digits, (K, 1, S, S) images, each titled 'true -> predicted'."""
    k = len(images)
    rows = max(1, -(-k // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.25), dpi=110, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(images[i, 0].cpu().numpy(), cmap="gray_r")
            ax.set_title(f"{int(true[i])} -> {int(predicted[i])}", fontsize=8, color="crimson")
    if k == 0:
        axes.flat[0].text(0.5, 0.5, "no test digit misclassified", ha="center", va="center")
    fig.tight_layout()
    return fig


def distortions_figure(originals: torch.Tensor, distorted: torch.Tensor):
    """Each row: an original (K, 1, S, S) then its distorted copies (K, C, 1, S, S)."""
    rows, copies = distorted.shape[:2]
    fig, axes = plt.subplots(rows, copies + 1, figsize=((copies + 1) * 0.9, rows * 0.9), dpi=110, squeeze=False)
    for r in range(rows):
        for c, image in enumerate([originals[r], *distorted[r]]):
            axes[r, c].imshow(image[0].cpu().numpy(), cmap="gray_r")
            axes[r, c].axis("off")
    axes[0, 0].set_title("original", fontsize=7)
    for c in range(1, copies + 1):
        axes[0, c].set_title(f"copy {c}", fontsize=7)
    fig.tight_layout()
    return fig


def sdlm_steps_figure(steps_by_layer: dict[str, torch.Tensor], pass_number: int, paper_range: tuple[float, float]):
    """Histogram of SDLM's per-pattern effective steps eta/(mu + h_kk) (log10 axis), one row
    per layer, with the paper's pass-1 range shaded."""
    fig, axes = plt.subplots(len(steps_by_layer), 1, figsize=(6, 1.1 * len(steps_by_layer) + 0.8), dpi=110, sharex=True)
    every = torch.cat([s.flatten() for s in steps_by_layer.values()]).log10()
    bins = np.linspace(min(every.min().item(), np.log10(paper_range[0])) - 0.2,
                       max(every.max().item(), np.log10(paper_range[1])) + 0.2, 61)  # fmt: skip
    for ax, (layer, steps) in zip(np.atleast_1d(axes), steps_by_layer.items()):
        ax.axvspan(*np.log10(paper_range), color="tab:green", alpha=0.15)
        ax.hist(steps.flatten().log10().cpu().numpy(), bins=bins, color="tab:blue")
        ax.set_yscale("log")
        ax.set_ylabel(layer, rotation=0, ha="right", va="center")
    np.atleast_1d(axes)[-1].set_xlabel("log10 effective step eta/(mu + h_kk), per pattern")
    fig.suptitle(f"SDLM steps at the start of pass {pass_number} (shaded: the paper's pass-1 range "
                 f"{paper_range[0]:g} to {paper_range[1]:g})", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig
