"""Test helpers shared by the masking-transform tests: input types, devices, independent oracles."""

import numpy as np
import pytest
import torch

from monai.data import MetaTensor

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
    ),
]
INPUT_TYPES = ["numpy", "torch", "metatensor"]
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]


def make_input(arr: np.ndarray, kind: str, device: str = "cpu"):
    """``arr`` as a numpy array, a torch tensor or a MetaTensor on ``device``."""
    if kind == "numpy":
        return arr
    t = torch.as_tensor(arr, device=device)
    return MetaTensor(t, meta={"filename_or_obj": "img.png"}) if kind == "metatensor" else t


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def oracle_pixel_mask(grid: np.ndarray, h: int, w: int, b: int) -> np.ndarray:
    """Block grid -> pixel mask by explicit slicing (independent of the library's indexing)."""
    grid = to_numpy(grid)
    mask = np.zeros((h, w), dtype=bool)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            mask[i * b : (i + 1) * b, j * b : (j + 1) * b] = grid[i, j]
    return mask


def seeded_like_transform(seed: int) -> torch.Generator:
    """The torch.Generator a masking transform seeded with ``set_random_state(seed)`` draws its first call from."""
    return torch.Generator().manual_seed(int(np.random.RandomState(seed).randint(0, 2**63 - 1, dtype=np.int64)))


def tol(dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


def fft_tol(dtype) -> dict:
    """Looser tolerance for results that went through an FFT round trip."""
    return {"rtol": 1e-4, "atol": 1e-5} if dtype in (np.float32, torch.float32) else {"rtol": 1e-9, "atol": 1e-10}
