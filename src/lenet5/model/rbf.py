"""OUTPUT: Euclidean RBF units over fixed 7x12 digit bitmaps (paper section II.B, Fig. 3)."""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

BITMAP_ROWS, BITMAP_COLS = 12, 7
BITMAP_FILE = "rbf_bitmaps_7x12.txt"


def load_digit_bitmaps() -> torch.Tensor:
    """The ten digit prototypes shipped with the package, (10, 84) float32 of +-1.

    Raises ValueError naming the line at fault if the data file is malformed.
    """
    text = resources.files(__package__).joinpath(BITMAP_FILE).read_text()
    digits: dict[int, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        is_row = len(line) == BITMAP_COLS and not set(line) - {"#", "."}
        if not line or (line.startswith("# ") and not is_row):
            continue  # a comment ("# " never starts a 7-pixel row: rows have no spaces)
        if line.startswith("digit "):
            current = digits.setdefault(int(line.split()[1]), [])
            continue
        if current is None or not is_row:
            raise ValueError(f"{BITMAP_FILE}:{number}: expected a 'digit N' header or 7 of '#'/'.', got {line!r}")
        current.append(line)
    if sorted(digits) != list(range(10)) or any(len(rows) != BITMAP_ROWS for rows in digits.values()):
        raise ValueError(f"{BITMAP_FILE}: expected digits 0-9 with {BITMAP_ROWS} rows each")
    return torch.tensor(
        [[1.0 if pixel == "#" else -1.0 for row in digits[d] for pixel in row] for d in range(10)]
    )


class RBFOutput(nn.Module):
    """y_i = sum_j (x_j - w_ij)^2 with w_i the fixed bitmap of class i (a buffer, never trained).

    Input (N, 84) -> distances (N, 10); the predicted class is the smallest distance.
    """

    def __init__(self, prototypes: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("prototypes", load_digit_bitmaps() if prototypes is None else prototypes)

    @property
    def in_features(self) -> int:
        return self.prototypes.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) - self.prototypes.unsqueeze(0)).pow(2).sum(-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, classes={self.prototypes.shape[0]}, fixed"
