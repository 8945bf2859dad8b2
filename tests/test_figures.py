"""The figures every run logs (lenet5.figures): what they show, drawn without training."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from lenet5.figures import misclassified_figure, sdlm_steps_figure


def test_the_misclassified_grid_shows_each_digit_on_its_own_scale_under_its_labels():
    images = torch.rand(11, 1, 32, 32) * 1.275 - 0.1  # the paper's input range
    true, predicted = torch.arange(11) % 10, (torch.arange(11) + 3) % 10
    fig = misclassified_figure(images, true, predicted, columns=8)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == [f"{int(a)} -> {int(b)}" for a, b in zip(true, predicted)]
    canvas = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)  # blank cells: NaN
    shown = [canvas[r * 41 + 9 : r * 41 + 41, c * 35 : c * 35 + 32] for r, c in (divmod(i, 8) for i in range(11))]
    for image, tile in zip(images[:, 0].numpy(), shown):
        np.testing.assert_allclose(tile, (image - image.min()) / (image.max() - image.min()), rtol=1e-6)
    assert np.isnan(canvas[41 + 9 :, 3 * 35 :]).all()  # the cells after the 11th digit stay blank
    plt.close(fig)
    empty = misclassified_figure(images[:0], true[:0], predicted[:0])
    assert [t.get_text() for t in empty.axes[0].texts] == ["no test digit misclassified"]
    plt.close(empty)


def test_the_sdlm_steps_figure_has_a_row_per_layer_with_its_histogram():
    steps = {"c1": torch.full((40,), 1e-4), "output": torch.logspace(-6, -3, 50)}
    fig = sdlm_steps_figure(steps, pass_number=2, paper_range=(1e-5, 1e-3))
    assert [ax.get_ylabel() for ax in fig.axes] == ["c1", "output"]
    counts = [ax.patches[-1].get_data().values for ax in fig.axes]  # the stairs of each row
    assert counts[0].sum() == 40 and counts[0].max() == 40 and counts[1].sum() == 50
    assert fig.axes[0].get_position().x0 * fig.get_figwidth() > 0.45 + 0.085 * 6 - 1e-9  # room for "output"
    plt.close(fig)
