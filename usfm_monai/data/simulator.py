"""The synthetic B-mode ultrasound simulator: one image, one mask, one low/high-quality pair from a seed.

:mod:`usfm_monai.data.synthetic` writes the bundles' embedded default datasets with it (see
:func:`usfm_monai.data.synthetic.make_synthetic_dataset`). The images are not meant to be clinically faithful;
they are built from the physics that gives ultrasound its look, so that the USFM pipeline (masked image modeling,
paper §3.2; downstream tasks, §3.3) sees data with the right statistics:

1. **Anatomy** as an echogenicity map in dB (scatterer strength), a specular-reflector map (capsules,
   fascia, skull, diaphragm) and an extra-attenuation map (air, bone, solid tumors), defined in physical
   coordinates (units of imaging depth) for six organ families: ``breast`` (skin, lobular fat, heterogeneous
   fibroglandular layer, striated pectoral muscle), ``thyroid`` (strap muscles, homogeneous lobe, trachea with
   air shadow, anechoic carotid), ``liver`` (fine homogeneous parenchyma, vessels, bright diaphragm),
   ``kidney`` (hypoechoic cortex, dark pyramids, hyperechoic sinus), ``fetal_head`` (amniotic fluid, skull ring
   with shadowing, falx, thalami) and ``heart`` (apical four-chamber view: anechoic chambers, myocardium,
   valves). Families differ by layering, structures and texture scale (point-spread function size).
2. **Lesions** (optional): ``benign`` = oval, wider-than-tall, smooth-margined hypoechoic mass with posterior
   acoustic enhancement; ``malignant`` = irregular, spiculated, taller-than-wide hypoechoic mass with an
   echogenic halo, microcalcifications and posterior acoustic shadowing; ``hyperechoic`` = smooth bright mass.
   The binary lesion mask is exact (evaluated analytically on the output pixel grid).
3. **Speckle**: circular complex Gaussian scatterers weighted by the echogenicity, convolved with an
   anisotropic Gaussian point-spread function (finer axially than laterally); the envelope is Rayleigh
   distributed in homogeneous tissue and Rician on specular reflectors. Additive electronic noise.
4. **Depth**: attenuation ``exp(-alpha depth)`` and shadowing/enhancement accumulated along each beam, then
   time-gain compensation (a partial ``exp(+alpha' depth)`` with random slider wobble and a focal-zone bump).
5. **Log compression** of the envelope to a fixed dynamic range (dB window) and 8-bit quantization.
6. **Geometry**: ``linear`` (rectangular image) or ``sector`` (fan; scan conversion of beams x depth samples
   into the Cartesian image, black outside the fan).

Low/high-quality pairs for enhancement share the anatomy: ``high`` is the clean image (spatial compounding of
independent speckle realizations, a small point-spread function, a wide dynamic range, little noise); ``low``
has one speckle realization, a larger point-spread function (blur), a narrow dynamic range and strong
electronic noise.

Everything is determined by the seed: each image draws from its own generators, seeded with
``np.random.SeedSequence(seed)`` split into anatomy, lesion and speckle streams (so one seed with and without
a lesion shows the same scene), and the datasets derive each image's seed from ``(base seed, index)`` with
:func:`image_seed`. Speed: about 70 images (45 pairs)
per CPU-second at 256 x 256 on one core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.fft

__all__ = [
    "ORGANS",
    "LESIONS",
    "GEOMETRIES",
    "GENERATOR_VERSION",
    "image_seed",
    "synthesize_image",
    "synthesize_pair",
]

#: Bumped whenever the pixels a given seed produces change, so cached datasets are regenerated.
GENERATOR_VERSION = "1"

ORGANS = ("breast", "thyroid", "liver", "kidney", "fetal_head", "heart")
LESIONS = ("benign", "malignant", "hyperechoic")
GEOMETRIES = ("linear", "sector")

# Per organ: point-spread function (axial, lateral) sigma in units of imaging depth / image width, amplitude
# attenuation alpha (nepers per imaging depth), sector (apex radius, half-angle in rad), lesion box
# (x range, z range) and lesion size scale.
_ORGAN_PHYSICS = {
    "breast": dict(psf=(0.003, 0.008), alpha=1.5, sector=(0.3, 0.6), box=((-0.25, 0.25), (0.3, 0.5)), size=1.0),
    "thyroid": dict(psf=(0.002, 0.005), alpha=1.2, sector=(0.3, 0.6), box=((-0.1, 0.1), (0.36, 0.48)), size=0.7),
    "liver": dict(psf=(0.004, 0.010), alpha=2.3, sector=(0.3, 0.6), box=((-0.3, 0.3), (0.3, 0.6)), size=0.9),
    "kidney": dict(psf=(0.004, 0.010), alpha=2.3, sector=(0.3, 0.6), box=((-0.1, 0.1), (0.5, 0.6)), size=0.6),
    "fetal_head": dict(psf=(0.0045, 0.011), alpha=1.0, sector=(0.3, 0.6), box=((-0.1, 0.1), (0.5, 0.6)), size=0.6),
    "heart": dict(psf=(0.005, 0.013), alpha=1.8, sector=(0.05, 0.75), box=((-0.2, 0.2), (0.3, 0.6)), size=0.7),
}

_FLUID_DB = -50.0  # anechoic (blood, amniotic fluid, cyst): far below the display floor

# Rendering settings: PSF scale, compounded speckle realizations, electronic noise (dB re tissue), dB window.
_QUALITY = {
    "standard": dict(psf_scale=1.0, looks=1, noise_db=-42.0, floor_db=-36.0, range_db=48.0),
    "high": dict(psf_scale=0.75, looks=3, noise_db=-55.0, floor_db=-36.0, range_db=48.0),
    "low": dict(psf_scale=1.8, looks=1, noise_db=-26.0, floor_db=-24.0, range_db=30.0),
}


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"image_size must be an int or (H, W) with both sides >= 16, got {image_size!r}.")
    return size  # type: ignore[return-value]


@lru_cache(maxsize=32)
def _geometry(shape: tuple[int, int], geometry: str, apex: float, half_angle: float) -> dict[str, np.ndarray]:
    """Physical coordinates of the beam raster and of the output pixels, plus the scan-conversion table.

    The raster has ``H`` depth samples (rows) x ``W`` beams (columns); depth runs over ``[0, 1]``.
    """
    h, w = shape
    d = (np.arange(h, dtype=np.float32) + 0.5) / h  # H
    u = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0  # W
    if geometry == "linear":
        half_width = 0.5 * w / h  # square pixels
        xr = np.broadcast_to(u[None, :] * half_width, shape).copy()
        zr = np.broadcast_to(d[:, None], shape).copy()
        return dict(xr=xr, zr=zr, xo=xr, zo=zr, fov=np.ones(shape, dtype=bool), table=None)
    # sector: beam u at angle u * half_angle from an apex ``apex`` above the skin line
    rho = apex + d[:, None]
    phi = u[None, :] * half_angle
    xr = (rho * np.sin(phi)).astype(np.float32)
    zr = (rho * np.cos(phi) - apex).astype(np.float32)
    x_half = (apex + 1.0) * math.sin(half_angle)
    z_top = apex * math.cos(half_angle) - apex
    scale = max(2.0 * x_half / w, (1.0 - z_top) / h)  # physical units per output pixel, same on both axes
    xo = ((np.arange(w, dtype=np.float32) + 0.5 - w / 2.0) * scale)[None, :].repeat(h, 0)
    zo = (z_top + (np.arange(h, dtype=np.float32) + 0.5) * scale)[:, None].repeat(w, 1)
    rho_o = np.hypot(xo, zo + apex)
    depth_o = rho_o - apex
    u_o = np.arctan2(xo, zo + apex) / half_angle
    fov = (depth_o >= 0) & (depth_o <= 1) & (np.abs(u_o) <= 1)
    # bilinear gather from the raster: row = depth * H - 0.5, col = (u + 1) / 2 * W - 0.5
    row = np.clip(depth_o * h - 0.5, 0, h - 1)
    col = np.clip((u_o + 1.0) * 0.5 * w - 0.5, 0, w - 1)
    r0 = np.minimum(np.floor(row).astype(np.int64), h - 2)
    c0 = np.minimum(np.floor(col).astype(np.int64), w - 2)
    fr = (row - r0).astype(np.float32)
    fc = (col - c0).astype(np.float32)
    idx = r0 * w + c0
    table = (idx, fr, fc, w)
    return dict(xr=xr, zr=zr, xo=xo, zo=zo, fov=fov, table=table)


def _scan_convert(raster: np.ndarray, geo: dict[str, Any]) -> np.ndarray:
    """Map a beam raster ``(H, W)`` onto the output grid (identity for linear probes); 0 outside the fan."""
    if geo["table"] is None:
        return raster
    idx, fr, fc, w = geo["table"]
    flat = raster.ravel()
    top = flat[idx] * (1 - fc) + flat[idx + 1] * fc
    bottom = flat[idx + w] * (1 - fc) + flat[idx + w + 1] * fc
    out = top * (1 - fr) + bottom * fr
    return np.where(geo["fov"], out, 0.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Random fields and shapes
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _interp_matrix(n: int, cells: int) -> np.ndarray:
    """``(n, cells + 2)`` Gaussian interpolation weights from a coarse lattice to ``n`` samples."""
    t = (np.arange(n) + 0.5) / n
    nodes = (np.arange(cells + 2) - 0.5) / cells
    wgt = np.exp(-0.5 * ((t[:, None] - nodes[None, :]) * cells) ** 2)
    return (wgt / wgt.sum(1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth Gaussian random field, zero mean, unit std, with about ``cells`` blobs along each side."""
    coarse = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    f = _interp_matrix(shape[0], cells) @ coarse @ _interp_matrix(shape[1], cells).T
    return (f - f.mean()) / (f.std() + 1e-6)


def _wave(rng: np.random.Generator, x: np.ndarray, amp: float, terms: int = 3) -> np.ndarray:
    """Smooth random 1-D profile of ``x`` (layer boundaries), amplitude about ``amp``."""
    out = np.zeros_like(x)
    for _ in range(terms):
        out += np.sin(2 * np.pi * rng.uniform(0.5, 2.5) * x + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1.0)
    return out * (amp / terms)


def _ellipse(x, z, cx, cz, a, b, theta=0.0):
    """Normalized elliptic radius (``< 1`` inside), normalized angle and the rotated local coordinates."""
    c, s = math.cos(theta), math.sin(theta)
    px = ((x - cx) * c + (z - cz) * s) / a
    pz = (-(x - cx) * s + (z - cz) * c) / b
    return np.hypot(px, pz), px, pz


def _ramp(rho: np.ndarray, edge: float) -> np.ndarray:
    """1 inside ``rho < 1``, 0 outside, with a linear transition of width ``edge`` (in ``rho`` units)."""
    return np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0)


def _line(dist: np.ndarray, width: float) -> np.ndarray:
    """A thin bright line where ``dist`` (physical units) is near 0."""
    return np.exp(-((dist / width) ** 2))


# ---------------------------------------------------------------------------------------------------------------
# Organ families: echogenicity (dB), specular amplitude, extra attenuation (nepers per unit depth)
# ---------------------------------------------------------------------------------------------------------------


def _breast(rng, x, z):
    shape = x.shape
    skin = 0.025 + _wave(rng, x, 0.004)
    fat_bottom = 0.17 + _wave(rng, x, 0.05)
    gland_bottom = 0.62 + _wave(rng, x, 0.07)
    muscle_bottom = 0.84 + _wave(rng, x, 0.03)
    lobules = _smooth_field(rng, shape, 7)
    fat = -15.0 + 3.0 * lobules + 9.0 * (np.abs(lobules) < 0.12)  # bright septa between fat lobules
    gland = -2.0 + 3.5 * _smooth_field(rng, shape, 14) + 1.5 * _smooth_field(rng, shape, 30)
    tilt = rng.uniform(-0.3, 0.3)
    muscle = -10.0 + 4.0 * np.sin(2 * np.pi * rng.uniform(22, 32) * (z + tilt * x))
    e = np.where(z < skin, 2.0, np.where(z < fat_bottom, fat, np.where(z < gland_bottom, gland, muscle)))
    e = np.where(z >= muscle_bottom, -20.0 + 2.0 * _smooth_field(rng, shape, 6), e)
    spec = 1.0 * _line(z - skin, 0.004) + 0.5 * _line(z - gland_bottom, 0.005) + 0.6 * _line(z - muscle_bottom, 0.006)
    return e, spec, 0.0


def _thyroid(rng, x, z):
    shape = x.shape
    side = rng.choice([-1.0, 1.0])
    e = -7.0 + 2.0 * _smooth_field(rng, shape, 10)
    skin = 0.02 + _wave(rng, x, 0.003)
    strap_bottom = 0.14 + _wave(rng, x, 0.02)
    strap = -12.0 + 3.0 * np.sin(2 * np.pi * 30 * (z + 0.2 * x))
    e = np.where(z < strap_bottom, strap, e)
    e = np.where(z < skin, 2.0, e)
    cx = -side * rng.uniform(0.0, 0.1)
    lobe, _, _ = _ellipse(x, z, cx, 0.42, 0.3, 0.2, rng.uniform(-0.15, 0.15))
    e = np.where(lobe < 1, 0.5 + 1.2 * _smooth_field(rng, shape, 20), e)
    spec = 0.9 * _line(z - skin, 0.004) + 0.4 * _line(z - strap_bottom, 0.005) + 0.4 * _line(lobe - 1.0, 0.03)
    trachea, _, pz = _ellipse(x, z, side * 0.45, 0.32, 0.12, 0.11)
    arc = (trachea < 1.05) & (pz < 0)
    spec = spec + 1.5 * _line(trachea - 1.0, 0.06) * (pz < 0)
    attn = 60.0 * arc * (trachea > 0.85)  # air in the trachea: everything below is shadowed
    e = np.where(arc, -25.0, e)
    carotid, _, _ = _ellipse(x, z, -side * 0.4, 0.45, 0.08, 0.075)
    e = np.where(carotid < 1, _FLUID_DB, e)
    spec = spec + 0.6 * _line(carotid - 1.0, 0.05)
    attn = attn - 1.5 * (carotid < 1)  # blood attenuates little: posterior enhancement
    return e, spec, attn


def _liver(rng, x, z):
    shape = x.shape
    wall = 0.06 + _wave(rng, x, 0.01)
    fat_bottom = 0.1 + _wave(rng, x, 0.015)
    e = -4.0 + 1.2 * _smooth_field(rng, shape, 8) + 0.8 * _smooth_field(rng, shape, 25)
    e = np.where(z < fat_bottom, -13.0, e)
    e = np.where(z < wall, -3.0 + 3.0 * np.sin(2 * np.pi * 35 * z), e)
    spec = 0.6 * _line(z - fat_bottom, 0.005)
    attn = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(3, 7))):
        a = rng.uniform(0.025, 0.065)
        vessel, _, _ = _ellipse(x, z, rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.7), a, a * rng.uniform(0.5, 1.0),
                                rng.uniform(-1, 1))
        e = np.where(vessel < 1, _FLUID_DB, e)
        attn = attn - 1.5 * (vessel < 1)
        if rng.random() < 0.5:  # portal veins have bright walls, hepatic veins do not
            spec = spec + 0.5 * _line(vessel - 1.0, 0.12)
    diaphragm = 0.8 + rng.uniform(0.15, 0.3) * x**2 + _wave(rng, x, 0.03)
    spec = spec + 1.2 * _line(z - diaphragm, 0.01)
    e = np.where(z > diaphragm, -22.0 + 3.0 * _smooth_field(rng, shape, 5), e)
    return e, spec, attn


def _kidney(rng, x, z):
    shape = x.shape
    e = -5.0 + 1.2 * _smooth_field(rng, shape, 8) + 0.8 * _smooth_field(rng, shape, 25)
    e = np.where(z < 0.08 + _wave(rng, x, 0.01), -12.0, e)
    cx, cz, theta = rng.uniform(-0.1, 0.1), rng.uniform(0.5, 0.6), rng.uniform(-0.35, 0.35)
    a, b = rng.uniform(0.32, 0.4), rng.uniform(0.17, 0.21)
    kid, px, pz = _ellipse(x, z, cx, cz, a, b, theta)
    e = np.where((kid >= 1) & (kid < 1.15), 2.0, e)  # perirenal fat
    e = np.where(kid < 1, -11.0 + 1.5 * _smooth_field(rng, shape, 14), e)  # cortex
    n = int(rng.integers(5, 8))
    for k in range(n):
        ang = np.pi * (k + 0.5) / n * 2
        pyr = np.hypot((px - 0.68 * math.cos(ang)) / 0.16, (pz - 0.68 * math.sin(ang)) / 0.2)
        e = np.where(pyr < 1, -21.0, e)
    sinus = np.hypot(px / 0.55, pz / 0.42) * (1 + 0.1 * np.sin(3 * np.arctan2(pz, px)))
    e = np.where(sinus < 1, 3.0 + 2.0 * _smooth_field(rng, shape, 20), e)
    spec = 0.7 * _line(kid - 1.0, 0.025)
    return e, spec, 0.0


def _fetal_head(rng, x, z):
    shape = x.shape
    e = np.full(shape, _FLUID_DB, np.float32)
    uterus = 0.12 + _wave(rng, x, 0.03)
    e = np.where(z < uterus, -5.0 + 2.0 * _smooth_field(rng, shape, 10), e)
    e = np.where(z < 0.04, 0.0, e)
    cx, cz, theta = rng.uniform(-0.1, 0.1), rng.uniform(0.5, 0.58), rng.uniform(-0.5, 0.5)
    head, px, pz = _ellipse(x, z, cx, cz, rng.uniform(0.3, 0.35), rng.uniform(0.25, 0.28), theta)
    e = np.where(head < 0.95, -13.0 + 2.0 * _smooth_field(rng, shape, 12), e)
    ring = np.abs(head - 1.0) < 0.06
    spec = 2.5 * _line(head - 1.0, 0.04) + 0.6 * _line(z - uterus, 0.006)
    attn = 20.0 * ring  # bone shadows what lies behind it
    spec = spec + 0.5 * _line(pz * 0.27, 0.006) * (head < 0.85)  # falx (midline echo)
    for sgn in (-1.0, 1.0):
        thal = np.hypot((px - 0.18) / 0.16, (pz - sgn * 0.2) / 0.12)
        e = np.where(thal < 1, -24.0, e)
    plexus = np.hypot((px + 0.45) / 0.12, (np.abs(pz) - 0.35) / 0.08)
    e = np.where(plexus < 1, -3.0, e)
    return e, spec, attn


def _heart(rng, x, z):
    shape = x.shape
    e = -9.0 + 2.0 * _smooth_field(rng, shape, 8)
    heart, _, _ = _ellipse(x, z, 0.0, 0.55, 0.55, 0.48)
    e = np.where(heart < 1, -3.0 + 2.0 * _smooth_field(rng, shape, 14), e)
    spec = 0.8 * _line(heart - 1.0, 0.03)
    attn = np.zeros(shape, np.float32)
    chambers = [(0.17, 0.35, 0.13, 0.24), (-0.17, 0.38, 0.11, 0.2), (0.17, 0.72, 0.12, 0.1), (-0.17, 0.72, 0.11, 0.1)]
    for cx, cz, a, b in chambers:
        j = rng.uniform(-0.025, 0.025, size=4)
        ch, _, _ = _ellipse(x, z, cx + j[0], cz + j[1], a + j[2] * 0.5, b + j[3] * 0.5)
        e = np.where(ch < 1, _FLUID_DB, e)
        attn = attn - 1.0 * (ch < 1)
    valves = (np.abs(z - 0.6 - 0.05 * x) < 0.008) & (np.abs(np.abs(x) - 0.17) < 0.09)
    spec = spec + 0.9 * valves
    return e, spec, attn


_ORGAN_BUILDERS = {
    "breast": _breast,
    "thyroid": _thyroid,
    "liver": _liver,
    "kidney": _kidney,
    "fetal_head": _fetal_head,
    "heart": _heart,
}


# ---------------------------------------------------------------------------------------------------------------
# Lesions
# ---------------------------------------------------------------------------------------------------------------


def _draw_lesion(rng: np.random.Generator, organ: str, kind: str) -> dict[str, Any]:
    phys = _ORGAN_PHYSICS[organ]
    (x0, x1), (z0, z1) = phys["box"]
    s = phys["size"] * rng.uniform(0.07, 0.13)
    spec: dict[str, Any] = dict(kind=kind, cx=rng.uniform(x0, x1), cz=rng.uniform(z0, z1))
    if kind == "malignant":  # taller than wide, angular and spiculated margin
        spec.update(a=s * rng.uniform(0.75, 0.95), b=s * rng.uniform(1.0, 1.3), theta=rng.uniform(-0.4, 0.4))
        spec["harmonics"] = [(k, rng.uniform(0.05, 0.1), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)]
        spec["spikes"] = (int(rng.integers(7, 12)), rng.uniform(0.3, 0.5), rng.uniform(0, 2 * np.pi))
        spec["drop_db"] = rng.uniform(17, 23)
        spec["attn"] = rng.uniform(7, 11)
        spec["calcs"] = [(rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)) for _ in range(int(rng.integers(3, 8)))]
    else:  # oval, wider than tall ("parallel"), smooth margin
        spec.update(a=s * rng.uniform(1.0, 1.2), b=s * rng.uniform(0.55, 0.8), theta=rng.uniform(-0.25, 0.25))
        spec["harmonics"] = [(k, rng.uniform(0.0, 0.04), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
        spec["spikes"] = None
        spec["drop_db"] = rng.uniform(13, 18) if kind == "benign" else -rng.uniform(7, 10)
        spec["attn"] = -2.0 if kind == "benign" else 0.0
        spec["calcs"] = []
    spec["texture_seed"] = int(rng.integers(2**31))
    return spec


def _lesion_radius(x, z, les):
    """Elliptic radius normalized by the (irregular) margin radius: ``< 1`` inside the lesion."""
    rho, px, pz = _ellipse(x, z, les["cx"], les["cz"], les["a"], les["b"], les["theta"])
    phi = np.arctan2(pz, px)
    margin = np.ones_like(rho)
    for k, amp, phase in les["harmonics"]:
        margin += amp * np.cos(k * phi + phase)
    if les["spikes"] is not None:
        k, amp, phase = les["spikes"]
        margin += amp * np.maximum(np.cos(k * phi + phase), 0.0) ** 8
    return rho / margin, px, pz


def _apply_lesion(les, x, z, e, spec, attn):
    r, px, pz = _lesion_radius(x, z, les)
    rng = np.random.default_rng(les["texture_seed"])
    if les["kind"] == "malignant":
        inside = _ramp(r, 0.05)
        interior = -les["drop_db"] + 3.0 * _smooth_field(rng, x.shape, 20)
        halo = (r >= 1.0) & (r < 1.18)
        e = np.where(halo, e + 3.0, e)
        for cx, cz in les["calcs"]:
            spec = spec + 0.9 * _line(np.hypot(px - cx, pz - cz) * les["a"], 0.005)
    else:
        inside = _ramp(r, 0.15)
        interior = -les["drop_db"] + 1.0 * _smooth_field(rng, x.shape, 10)
    e = e + inside * interior
    attn = attn + les["attn"] * (r < 1.0)
    return e, spec, attn


# ---------------------------------------------------------------------------------------------------------------
# Imaging chain
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _psf_transfer(shape: tuple[int, int], sigma_axial_px: float, sigma_lateral_px: float) -> np.ndarray:
    """Gaussian point-spread function in the Fourier domain, scaled to unit energy (speckle power = E)."""
    fy = scipy.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = scipy.fft.fftfreq(shape[1]).astype(np.float32)[None, :]
    tf = np.exp(-2 * np.pi**2 * ((sigma_axial_px * fy) ** 2 + (sigma_lateral_px * fx) ** 2))
    return (tf / np.sqrt(np.mean(tf**2))).astype(np.float32)


def _render(
    rng: np.random.Generator,
    organ: str,
    e_db: np.ndarray,
    spec: np.ndarray,
    attn: np.ndarray,
    tgc: np.ndarray,
    gain_db: float,
    geo: dict[str, Any],
    quality: str | Mapping[str, float],
) -> np.ndarray:
    """Speckle, noise, depth gain and log compression on the beam raster, then scan conversion; float [0, 1].

    ``quality`` names a :data:`_QUALITY` entry or is such a settings dict itself.
    """
    q = _QUALITY[quality] if isinstance(quality, str) else quality
    h, w = e_db.shape
    sa, sl = _ORGAN_PHYSICS[organ]["psf"]
    tf = _psf_transfer((h, w), sa * h * q["psf_scale"], sl * w * q["psf_scale"])
    # amplitude reaching the probe: echogenicity, attenuation and shadowing along each beam (rows = depth)
    loss = np.float32(_ORGAN_PHYSICS[organ]["alpha"]) * geo["zr_depth"] + attn
    # scatterer amplitude 10^(E/20), times 1/sqrt(2) per quadrature so that E|echo|^2 = 10^(E/10)
    amp = np.exp(e_db * np.float32(math.log(10) / 20) - loss - np.float32(0.5 * math.log(2)))
    spec_amp = (spec * np.exp(-loss)).astype(np.float32)
    noise_amp = np.float32(10.0 ** (q["noise_db"] / 20.0) * math.sqrt(0.5))
    intensity = np.zeros((h, w), np.float32)
    for _ in range(q["looks"]):  # spatial compounding averages independent speckle patterns
        # (H, W, 2) standard normals viewed as (H, W) circular complex Gaussians, without a copy
        z = rng.standard_normal((2, h, w, 2), dtype=np.float32).view(np.complex64)[..., 0]
        echo = scipy.fft.ifft2(scipy.fft.fft2(z[0] * amp, workers=1) * tf, workers=1)
        echo += spec_amp + z[1] * noise_amp
        intensity += echo.real**2 + echo.imag**2
    env = np.sqrt(intensity / q["looks"]) * tgc
    db = 20.0 * np.log10(env + 1e-6) + gain_db
    img = np.clip((db - q["floor_db"]) / q["range_db"], 0.0, 1.0)
    return _scan_convert(img.astype(np.float32), geo)


def _check_args(organ: str, geometry: str, lesion: str | None) -> None:
    if organ not in ORGANS:
        raise ValueError(f"organ must be one of {ORGANS}, got {organ!r}.")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}.")
    if lesion is not None and lesion not in LESIONS:
        raise ValueError(f"lesion must be None or one of {LESIONS}, got {lesion!r}.")


def _scene(organ, image_size, geometry, lesion, seed):
    """Draw the anatomy (maps on the beam raster), the acquisition settings and the lesion.

    The seed is split into three independent streams (anatomy and acquisition, lesion, speckle), so the same
    seed with and without a lesion gives the same anatomy, gain and speckle pattern: the images differ only
    by the lesion and its acoustic effects.
    """
    _check_args(organ, geometry, lesion)
    shape = _as_size(image_size)
    apex, half_angle = _ORGAN_PHYSICS[organ]["sector"]
    geo = dict(_geometry(shape, geometry, apex, half_angle))
    geo["zr_depth"] = ((np.arange(shape[0], dtype=np.float32) + 0.5) / shape[0])[:, None]
    anatomy_seq, lesion_seq, speckle_seq = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(anatomy_seq)
    x, z = geo["xr"], geo["zr"]
    e, spec, attn = _ORGAN_BUILDERS[organ](rng, x, z)
    attn = np.broadcast_to(np.asarray(attn, np.float32), shape)
    spec = np.broadcast_to(np.asarray(spec, np.float32), shape)
    alpha = _ORGAN_PHYSICS[organ]["alpha"]
    depth = geo["zr_depth"]
    sliders = np.interp(depth[:, 0], np.linspace(0, 1, 8), rng.uniform(-0.15, 0.15, 8))[:, None]
    focus = rng.uniform(0.3, 0.7)
    tgc = np.exp(alpha * rng.uniform(0.75, 0.95) * depth + sliders + 0.15 * np.exp(-(((depth - focus) / 0.15) ** 2)))
    gain_db = rng.uniform(-2.0, 2.0)
    mask = np.zeros(shape, dtype=bool)
    if lesion is not None:
        les = _draw_lesion(np.random.default_rng(lesion_seq), organ, lesion)
        e, spec, attn = _apply_lesion(les, x, z, e, spec, attn)
        mask = (_lesion_radius(geo["xo"], geo["zo"], les)[0] < 1.0) & geo["fov"]
    # attenuation per unit depth accumulates along each beam (axis 0) into a shadow / enhancement factor
    attn = np.cumsum(attn, axis=0, dtype=np.float32) / shape[0]
    speckle_rng = np.random.default_rng(speckle_seq)
    return speckle_rng, geo, e.astype(np.float32), spec, attn, tgc.astype(np.float32), gain_db, mask


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(img * 255.0).astype(np.uint8)


def synthesize_image(
    organ: str,
    image_size: int | Sequence[int] = (256, 256),
    geometry: str = "linear",
    lesion: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One synthetic B-mode image, fully determined by its arguments.

    Args:
        organ: one of :data:`ORGANS`.
        image_size: ``H`` (square) or ``(H, W)``, each side >= 16.
        geometry: ``"linear"`` (rectangle) or ``"sector"`` (fan, black outside).
        lesion: ``None`` (no lesion, class ``normal``), ``"benign"``, ``"malignant"`` or ``"hyperechoic"``.
        seed: the image's seed (anatomy, lesion and speckle streams are spawned from it).

    Returns:
        dict with ``image`` (``(H, W)`` uint8 in ``[0, 255]``), ``mask`` (``(H, W)`` uint8 lesion mask in
        ``{0, 1}``, all zero without a lesion), ``fov`` (``(H, W)`` uint8 field of view in ``{0, 1}``),
        ``organ``, ``geometry``, ``lesion`` and ``class_name`` (``lesion`` or ``"normal"``).

    Raises:
        ValueError: unknown ``organ``, ``geometry`` or ``lesion``, or a bad ``image_size``.
    """
    rng, geo, e, spec, attn, tgc, gain_db, mask = _scene(organ, image_size, geometry, lesion, seed)
    img = _render(rng, organ, e, spec, attn, tgc, gain_db, geo, "standard")
    return dict(
        image=_to_uint8(img),
        mask=mask.astype(np.uint8),
        fov=geo["fov"].astype(np.uint8),
        organ=organ,
        geometry=geometry,
        lesion=lesion,
        class_name=lesion if lesion is not None else "normal",
    )


def synthesize_pair(
    organ: str,
    image_size: int | Sequence[int] = (256, 256),
    geometry: str = "linear",
    lesion: str | None = None,
    seed: int = 0,
    low_settings: Mapping[str, float] | None = None,
    shared_speckle: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A low/high-quality pair of the same anatomy, for image enhancement (paper §3.3, Fig. 5b).

    ``high`` is the clean image: three compounded speckle realizations, a small point-spread function, a
    48 dB window and little electronic noise. ``low`` has a single speckle realization, a 1.8x wider
    point-spread function (blur), a 30 dB window (lower dynamic range) and electronic noise 29 dB stronger.
    By default its speckle and noise are drawn independently of ``high``'s, as in two acquisitions.

    ``low_settings`` and ``shared_speckle`` isolate one degradation at a time, e.g.
    ``low_settings={**_QUALITY["high"], "psf_scale": 1.8}, shared_speckle=True`` gives a pair that differs only
    by the blur. With the defaults the pair is unchanged.

    Args:
        organ, image_size, geometry, lesion, seed: as :func:`synthesize_image`.
        low_settings: overrides of the low-quality rendering settings (keys ``psf_scale``, ``looks``,
            ``noise_db``, ``floor_db``, ``range_db``); ``None`` keeps them.
        shared_speckle: render ``low`` from the same random draws as ``high`` (its first ``looks`` speckle and
            noise realizations) instead of new ones.

    Returns:
        ``(low, high)``: two ``(H, W)`` uint8 images in ``[0, 255]`` with the same field of view.

    Raises:
        ValueError: as :func:`synthesize_image`, or an unknown ``low_settings`` key / ``looks`` below 1.
    """
    low_q = dict(_QUALITY["low"])
    for key, value in (low_settings or {}).items():
        if key not in low_q:
            raise ValueError(f"low_settings keys must be among {sorted(low_q)}, got {key!r}.")
        low_q[key] = int(value) if key == "looks" else float(value)
    if low_q["looks"] < 1:
        raise ValueError(f"low_settings['looks'] must be >= 1, got {low_q['looks']!r}.")
    rng, geo, e, spec, attn, tgc, gain_db, _ = _scene(organ, image_size, geometry, lesion, seed)
    state = rng.bit_generator.state if shared_speckle else None
    high = _render(rng, organ, e, spec, attn, tgc, gain_db, geo, "high")
    if state is not None:
        rng.bit_generator.state = state
    low = _render(rng, organ, e, spec, attn, tgc, gain_db, geo, low_q)
    return _to_uint8(low), _to_uint8(high)


def image_seed(base_seed: int, index: int) -> int:
    """The seed of image ``index`` in a dataset generated with ``base_seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)
