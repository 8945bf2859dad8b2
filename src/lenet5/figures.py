"""Figures logged with every run (the confusion matrix, the misclassified test digits, ...), and
one test image passing through a trained network (`python -m lenet5.inspect_run`)."""

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
    """Grid of misclassified digits, (K, 1, S, S) images, each titled 'true -> predicted'.

    One image of all the digits side by side (each scaled to its own range, as imshow would
    scale it alone) with a label above each: an axes per digit drew the same picture in 10x the
    time (2.8 s against 0.25 s for 64 digits), and every run draws it."""
    k, size = len(images), images.shape[-1]
    rows = max(1, -(-k // columns))
    label_px, gap_px = 9, 3  # pixels above each digit for its label, between neighbours
    cell_w, cell_h = size + gap_px, size + label_px
    canvas = np.full((rows * cell_h, columns * cell_w), np.nan)  # NaN: the white background
    for i, image in enumerate(images[:, 0].cpu().numpy()):
        r, c = divmod(i, columns)
        low, high = image.min(), image.max()
        canvas[r * cell_h + label_px : (r + 1) * cell_h, c * cell_w : c * cell_w + size] = (image - low) / max(high - low, 1e-12)
    fig, ax = plt.subplots(figsize=(columns * 1.1, rows * 1.25), dpi=110)
    ax.imshow(canvas, cmap=plt.get_cmap("gray_r").with_extremes(bad="white"), vmin=0, vmax=1, interpolation="nearest")
    for i in range(k):
        r, c = divmod(i, columns)
        ax.text(c * cell_w + size / 2, r * cell_h + label_px - 1.5, f"{int(true[i])} -> {int(predicted[i])}",
                ha="center", va="bottom", fontsize=8, color="crimson")  # fmt: skip
    if k == 0:
        ax.text(0.5, 0.5, "no test digit misclassified", ha="center", va="center", transform=ax.transAxes)
    ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99)
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
        counts, _ = np.histogram(steps.flatten().log10().cpu().numpy(), bins=bins)
        ax.stairs(counts, bins, fill=True, color="tab:blue")  # one patch, not one bar each
        ax.set_yscale("log")
        ax.set_ylabel(layer, rotation=0, ha="right", va="center")
    np.atleast_1d(axes)[-1].set_xlabel("log10 effective step eta/(mu + h_kk), per pattern")
    fig.suptitle(f"SDLM steps at the start of pass {pass_number} (shaded: the paper's pass-1 range "
                 f"{paper_range[0]:g} to {paper_range[1]:g})", fontsize=9)  # fmt: skip
    # Fixed margins: tight_layout draws the figure twice. With one patch per layer, not a bar per
    # bin, the figure takes 0.5 s instead of 1.3 s, twice in every SDLM run.
    label_in = 0.45 + 0.085 * max(len(layer) for layer in steps_by_layer)  # tick labels, then the layer's name
    fig.subplots_adjust(left=label_in / fig.get_figwidth(), right=0.98, top=1 - 0.45 / fig.get_figheight(), bottom=0.55 / fig.get_figheight(), hspace=0.15)
    return fig


def _map_grid(subfig, maps: np.ndarray, columns: int, vmax: float, cmap: str) -> None:
    """Feature maps (C, H, W) in a grid `columns` wide, one shared colour scale."""
    rows = -(-len(maps) // columns)
    axes = subfig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        if i < len(maps):
            ax.imshow(maps[i], cmap=cmap, vmin=-vmax, vmax=vmax)
            ax.set_title(str(i), fontsize=6, pad=1)
        else:
            ax.axis("off")


def network_figure(image: torch.Tensor, stages: list[tuple[str, torch.Tensor]], predicted: int,
                   prototypes: torch.Tensor | None, label: int | None, title: str = ""):  # fmt: skip
    """One image passing through LeNet-5, left to right and top to bottom.

    `image` (1, S, S) as the network saw it; `stages` the [(name, output)] of
    `LeNet5.stage_outputs` for that one image, batch dimension dropped: C1 (6, 28, 28),
    S2 (6, 14, 14), C3 (16, 10, 10), S4 (16, 5, 5), C5 (120, h, w), F6 (width,), OUTPUT (10,).
    `predicted` is the network's own verdict (`LeNet5.predict`), marked on OUTPUT;
    `prototypes` (10, 84) are the RBF bitmaps (None for a softmax head: OUTPUT is then logits);
    `label` the true class, if known.
    """
    out = dict(stages)
    values = out["OUTPUT"].detach().cpu().numpy()
    rbf = prototypes is not None

    fig = plt.figure(figsize=(17, 10.5), dpi=100, layout="constrained")
    verdict = (f"true {label}, " if label is not None else "") + f"predicted {predicted}"
    legend = "maps after the squashing function; colour: blue negative, white 0, red positive, one scale per stage"
    fig.suptitle("\n".join(filter(None, [title, verdict, legend])), fontsize=12)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.35, 1], hspace=0.04)

    # Top row: the input, then each convolutional stage; one colour scale per stage (blue
    # negative, red positive, white 0) so a map's sign reads the same everywhere in it.
    conv = [name for name, _ in stages if name not in ("F6", "OUTPUT")]
    panels = top.subfigures(1, 1 + len(conv), width_ratios=[1.3, 1, 1, 1.6, 1.6, 1.1][: 1 + len(conv)], wspace=0.02)
    pixels = image[0].detach().cpu().numpy()
    ax = panels[0].subplots()
    ax.imshow(pixels, cmap="gray_r")
    ax.set_xticks([]), ax.set_yticks([])
    panels[0].suptitle(f"input\n1@{pixels.shape[0]}x{pixels.shape[1]}\nas preprocessed", fontsize=10)
    for panel, name in zip(panels[1:], conv):
        maps = out[name].detach().cpu().numpy()
        vmax = float(np.abs(maps).max()) or 1.0
        if name == "C5":
            # C5: one value per unit (the paper's 1x1 maps; a wider map shows its mean),
            # drawn 12 rows of 10 so the 120 units fit the column.
            units = maps.reshape(len(maps), -1).mean(1)
            ax = panel.subplots()
            ax.imshow(units.reshape(12, -1), cmap="bwr", vmin=-vmax, vmax=vmax)
            ax.set_xticks(range(0, units.size // 12, 3)), ax.set_yticks(range(0, 12, 3))
            ax.tick_params(labelsize=6)
            ax.set_xlabel("unit = 10 x row + column", fontsize=7)
            shape = f"{len(maps)}@{maps.shape[1]}x{maps.shape[2]}" + (", mean of each" if maps.shape[1] * maps.shape[2] > 1 else "")
        else:
            _map_grid(panel, maps, columns=2 if len(maps) <= 6 else 4, vmax=vmax, cmap="bwr")
            shape = f"{len(maps)}@{maps.shape[1]}x{maps.shape[2]}"
        panel.suptitle(f"{name}\n{shape}\ncolour ±{vmax:.2f}", fontsize=10)

    # Bottom row: F6 beside what it is compared with, then the verdict.
    f6 = out["F6"].detach().cpu().numpy()
    if rbf:
        f6_panel, bitmaps_panel, scores_panel = bottom.subfigures(1, 3, width_ratios=[0.8, 2.6, 2.2], wspace=0.02)
    else:
        f6_panel, scores_panel = bottom.subfigures(1, 2, width_ratios=[1, 2.2], wspace=0.02)
    vmax = max(1.0, float(np.abs(f6).max()))  # the bitmaps are +-1: one scale for both
    ax = f6_panel.subplots()
    if f6.size == 84:  # the bitmaps' 7x12 layout, so F6 reads as the digit it is compared with
        ax.imshow(f6.reshape(12, 7), cmap="bwr", vmin=-vmax, vmax=vmax)
        ax.set_xticks([]), ax.set_yticks([])
        f6_panel.suptitle(f"F6\n84 units as 7x12\ncolour ±{vmax:.2f}", fontsize=10)
    else:  # no bitmap to match: one bar per unit
        ax.bar(range(f6.size), f6, width=1.0, color="tab:gray")
        ax.set_xlabel("unit"), ax.set_xlim(-0.5, f6.size - 0.5)
        f6_panel.suptitle(f"F6\n{f6.size} units", fontsize=10)

    if rbf:
        bitmaps = prototypes.detach().cpu().numpy().reshape(-1, 12, 7)
        axes = bitmaps_panel.subplots(2, 5)
        for digit, ax in enumerate(axes.flat):
            ax.imshow(bitmaps[digit], cmap="bwr", vmin=-vmax, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            chosen = digit == predicted
            ax.set_title(f"{digit}: d = {values[digit]:.1f}", fontsize=9,
                         color="crimson" if chosen else "black", fontweight="bold" if chosen else "normal")  # fmt: skip
            if chosen:
                for side in ax.spines.values():
                    side.set_edgecolor("crimson"), side.set_linewidth(3)
        bitmaps_panel.suptitle("RBF bitmaps, 7x12 (d = squared distance from F6)", fontsize=10)

    ax = scores_panel.subplots()
    colours = ["crimson" if digit == predicted else "tab:blue" for digit in range(len(values))]
    ax.bar(range(len(values)), values, color=colours)
    ax.set_xticks(range(len(values)))
    ax.set_xlabel("class" + (" (true class bold)" if label is not None else ""))
    if label is not None:
        ax.get_xticklabels()[label].set_fontweight("bold")
    ax.margins(y=0.12)  # room for the "predicted" label above the tallest bar
    # Above the bar's top, or above 0 for a negative logit, so the label never sits on a bar.
    ax.annotate("predicted", (predicted, max(float(values[predicted]), 0.0)), xytext=(0, 4), textcoords="offset points",
                ha="center", va="bottom", color="crimson", fontsize=9)  # fmt: skip
    what = "RBF distances (smallest wins)" if rbf else "logits (largest wins)"
    ax.set_ylabel("distance" if rbf else "logit")
    scores_panel.suptitle(f"OUTPUT\n{len(values)} {what}", fontsize=10)
    return fig
