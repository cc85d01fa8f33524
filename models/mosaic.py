"""Layout of the representative image: one square tile per SOM cluster, in cluster order."""

from __future__ import annotations

import numpy as np


def tile_grid(n_clusters: int) -> tuple[int, int]:
    """Rows and columns of the tile mosaic: as square as possible, wider than tall.

    Examples
    --------
    >>> tile_grid(20)
    (4, 5)
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    rows = int(np.floor(np.sqrt(n_clusters)))
    while n_clusters % rows:
        rows -= 1
    cols = n_clusters // rows
    if rows == 1 and n_clusters > 3:  # a prime count: near-square with blanks at the end
        rows = int(np.floor(np.sqrt(n_clusters)))
        cols = int(np.ceil(n_clusters / rows))
    return rows, cols


def split_tiles(images: np.ndarray, n_clusters: int, tile: int) -> np.ndarray:
    """(B, rows*tile, cols*tile) mosaics -> (B, n_clusters, tile, tile) tiles in cluster order."""
    rows, cols = tile_grid(n_clusters)
    b = images.shape[0]
    if images.shape[1:] != (rows * tile, cols * tile):
        raise ValueError(
            f"mosaic shape {images.shape[1:]} does not match {n_clusters} tiles of {tile}px "
            f"({rows * tile}, {cols * tile})"
        )
    t = images.reshape(b, rows, tile, cols, tile).transpose(0, 1, 3, 2, 4)
    return t.reshape(b, rows * cols, tile, tile)[:, :n_clusters]
