"""Figures like the paper's Fig. 6: masked inputs, reconstructions and their log-amplitude spectra."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from usfm_monai.io import atomic_write

__all__ = ["log_amplitude_spectrum", "reconstruction_figure", "save_png_atomic"]

RECONSTRUCTION_COLUMNS = (
    "original",
    "spatial mask",
    "frequency mask",
    "dual-masked input",
    "reconstruction",
    "input spectrum",
    "reconstruction spectrum",
)


def _to_numpy_2d(img: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = img.detach().float().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
    arr = np.squeeze(arr)
    if arr.ndim == 3:  # (C, H, W): show the channel mean
        arr = arr.mean(0)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image or (C, H, W) with one spatial plane, got shape {tuple(arr.shape)}.")
    return arr


def log_amplitude_spectrum(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """Centred log-amplitude spectrum ``log(1 + |DFT(img)|)`` (eq. 3 and 5), shape ``(H, W)``, float32."""
    arr = _to_numpy_2d(img)
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(arr)))).astype(np.float32)


def reconstruction_figure(
    original: Sequence[np.ndarray | torch.Tensor],
    spatial_mask: Sequence[np.ndarray | torch.Tensor],
    frequency_masked: Sequence[np.ndarray | torch.Tensor],
    dual_masked: Sequence[np.ndarray | torch.Tensor],
    reconstruction: Sequence[np.ndarray | torch.Tensor],
    titles: Sequence[str] | None = None,
) -> np.ndarray:
    """Render one row per image: original | spatial mask | frequency mask | dual-masked input | reconstruction |
    log-amplitude spectra of the input and of the reconstruction (the paper's Fig. 6 layout).

    Every argument is a sequence (one entry per row) of 2-D images ``(H, W)`` or ``(1, H, W)``; intensities in
    ``[0, 1]`` are shown as gray levels in that range. Returns an RGB ``uint8`` array ``(H_fig, W_fig, 3)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = len(original)
    if not rows or any(len(x) != rows for x in (spatial_mask, frequency_masked, dual_masked, reconstruction)):
        raise ValueError("reconstruction_figure needs the same, non-zero number of images in every column.")
    fig = Figure(figsize=(2.0 * len(RECONSTRUCTION_COLUMNS), 2.1 * rows), dpi=80)
    axes = fig.subplots(rows, len(RECONSTRUCTION_COLUMNS), squeeze=False)
    for r in range(rows):
        panels = [
            (_to_numpy_2d(original[r]), (0, 1)),
            (_to_numpy_2d(spatial_mask[r]), (0, 1)),
            (_to_numpy_2d(frequency_masked[r]), (0, 1)),
            (_to_numpy_2d(dual_masked[r]), (0, 1)),
            (_to_numpy_2d(reconstruction[r]), (0, 1)),
            (log_amplitude_spectrum(dual_masked[r]), None),
            (log_amplitude_spectrum(reconstruction[r]), None),
        ]
        for c, (panel, vrange) in enumerate(panels):
            ax = axes[r, c]
            if vrange is None:
                ax.imshow(panel, cmap="magma")
            else:
                ax.imshow(panel, cmap="gray", vmin=vrange[0], vmax=vrange[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(RECONSTRUCTION_COLUMNS[c], fontsize=8)
        if titles is not None:
            axes[r, 0].set_ylabel(str(titles[r]), fontsize=7)
    canvas = FigureCanvasAgg(fig)  # draws off-screen: no display or pyplot state involved
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png_atomic(rgb: np.ndarray, path: str) -> str:
    """Write an ``(H, W)`` or ``(H, W, 3)`` uint8 array as PNG via a temporary file and ``os.replace``."""
    from PIL import Image

    with atomic_write(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(rgb)).save(f, format="PNG")
    return os.path.abspath(path)
