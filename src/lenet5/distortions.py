"""The paper's training-set distortions: random planar affine maps, computed in batches on the device.

Paper, section III.C: the 60,000 training images were augmented with 540,000 distorted
copies, each a combination of horizontal and vertical translation, scaling, squeezing
(horizontal compression with vertical elongation, or the reverse) and horizontal shearing.
The paper gives no ranges; ours are `data.distortion.*`.

The distorted set is fixed, as the paper's was: copy c of image i always gets the same
transform (drawn once from the run's seed), and images are warped batch by batch as they
are served, so the 600,000 images never sit in memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .batches import TensorBatches

#: Transform parameters per copy: dx, dy (pixels), scale, squeeze, shear.
PARAMS = 5


def draw_transforms(count: int, distortion_cfg: Any, generator: torch.Generator) -> torch.Tensor:
    """(count, 5) uniform draws within the configured ranges: dx, dy, scale, squeeze, shear."""
    u = torch.rand(count, PARAMS, generator=generator) * 2 - 1  # U(-1, 1)
    ranges = torch.tensor(
        [distortion_cfg.translate, distortion_cfg.translate, distortion_cfg.scale,
         distortion_cfg.squeeze, distortion_cfg.shear]
    )  # fmt: skip
    values = u * ranges
    values[:, 2:4] += 1.0  # scale and squeeze are factors around 1
    return values


def affine_matrices(transforms: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 5) transforms -> (N, 2, 3) matrices for `F.affine_grid`, mapping output to input
    coordinates in [-1, 1] units for a `size` x `size` image.

    The image is scaled by `scale`, then x by `squeeze` and y by 1/`squeeze` (squeezing keeps
    the area), sheared horizontally by `shear` (x += shear * y), then translated.
    """
    dx, dy, scale, squeeze, shear = transforms.unbind(1)
    sx, sy = scale * squeeze, scale / squeeze
    # Forward map A = [[sx, shear*sy], [0, sy]] plus translation; affine_grid wants its inverse.
    forward = torch.zeros(len(transforms), 3, 3, dtype=transforms.dtype, device=transforms.device)
    forward[:, 0, 0], forward[:, 0, 1], forward[:, 1, 1] = sx, shear * sy, sy
    forward[:, 0, 2], forward[:, 1, 2] = dx * 2 / size, dy * 2 / size
    forward[:, 2, 2] = 1.0
    return torch.linalg.inv(forward)[:, :2, :]


def distort(images: torch.Tensor, transforms: torch.Tensor, background: float) -> torch.Tensor:
    """Warp (N, 1, S, S) images by (N, 5) transforms (bilinear; outside pixels = `background`)."""
    grid = F.affine_grid(affine_matrices(transforms.to(images), images.shape[-1]), list(images.shape), align_corners=False)
    shifted = images - background  # grid_sample pads with zeros: make the background zero
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


class DistortedBatches(TensorBatches):
    """The originals plus `copies` fixed distorted copies of each, shuffled together each pass.

    Item k of a pass is copy k // N of image k % N (copy 0: the original).
    """

    def __init__(self, images, labels, batch_size: int, copies: int, distortion_cfg: Any, background: float, seed: int, per_pass: int = 0):
        super().__init__(images, labels, batch_size, shuffle=True, seed=seed, per_pass=per_pass)
        self.copies, self.background = copies, background
        transform_generator = torch.Generator().manual_seed(seed + 2)
        # Row c * N + i: the transform of copy c (1-based) of image i.
        self.transforms = draw_transforms(len(labels) * copies, distortion_cfg, transform_generator).to(images.device)

    @property
    def size(self) -> int:
        return len(self.labels) * (1 + self.copies)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.labels)
        image_index, copy = index % n, index // n
        images = self.images[image_index]
        # Every row is warped (originals by any transform, then discarded) and the originals
        # are put back by `where`: selecting the distorted rows by a mask would need their
        # count on the host, a device synchronisation every batch. Each row's warp is its own
        # (affine_grid and grid_sample work image by image), so the values are those of
        # warping the distorted rows alone.
        rows = (copy - 1).clamp(min=0) * n + image_index
        distorted = (copy > 0).view(-1, 1, 1, 1)
        return torch.where(distorted, distort(images, self.transforms[rows], self.background), images), self.labels[image_index]
