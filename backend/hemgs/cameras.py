"""Pinhole cameras: the `Camera` type, readers for cameras.json / transforms.json, view sampling.

Convention (the same as gsplat and COLMAP/OpenCV): `viewmat` maps world to camera coordinates,
camera x right, y down, z forward (looking along +z); `K` holds pixel focal lengths and centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Camera:
    viewmat: np.ndarray  # (4,4) float64, world -> camera
    K: np.ndarray  # (3,3) float64 intrinsics in pixels
    width: int
    height: int
    name: str = ""
    image_path: str | None = None  # the photo taken from this camera, when there is one

    def __post_init__(self) -> None:
        self.viewmat = np.asarray(self.viewmat, dtype=np.float64).reshape(4, 4)
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.width, self.height = int(self.width), int(self.height)

    @property
    def center(self) -> np.ndarray:
        """Camera position in world coordinates."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t
