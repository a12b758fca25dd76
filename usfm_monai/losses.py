"""Reconstruction losses of USFM pre-training (Jiao et al., arXiv 2401.00153, §3.2.3, eq. 11-14).

The masked-image-modeling objective is ``L = L_spa + lambda * L_freq`` with an L1 spatial term (eq. 12) and the
focal frequency loss of Jiang et al., "Focal Frequency Loss for Image Reconstruction and Synthesis", ICCV 2021
(eq. 13-14). :class:`FocalFrequencyLoss` reproduces the semantics of the authors' reference package
``focal_frequency_loss`` v0.3.0 (https://github.com/EndlessSora/focal-frequency-loss), which is used only as a
test oracle.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from usfm_monai.data.datalist import planned_items
from usfm_monai.utils import ensure_bool

__all__ = ["FocalFrequencyLoss", "USFMReconstructionLoss", "balanced_class_weights"]


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    for name, value in (("pred", pred), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(value).__name__}.")
        if value.ndim != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(value.shape)}.")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got dtype {value.dtype}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape (B, C, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}."
        )


class FocalFrequencyLoss(nn.Module):
    """Focal frequency loss (Jiang et al., ICCV 2021), the frequency term of USFM (eq. 13-14).

    Both images are cut into ``patch_factor x patch_factor`` patches and transformed with the orthonormal 2-D DFT.
    With ``D(u, v) = |F_pred(u, v) - F_target(u, v)|`` the loss is::

        loss_weight * mean_{b, patch, c, u, v}( w(u, v) * D(u, v) ** 2 )

    where the spectrum weight ``w = D ** alpha`` (eq. 14), optionally ``log(1 + w)``, is divided by its maximum
    over each ``(image, patch, channel)`` spectrum (over the whole batch when ``batch_matrix=True``) so that it lies
    in ``[0, 1]`` (an all-zero spectrum gets weight 0), and is **detached**: gradients reach ``pred`` only through
    ``D ** 2``. The mean over ``(u, v)`` is the ``1 / (HW)`` of eq. 13. The FFT always runs in float32 with autocast
    disabled, so the loss is safe under mixed precision.

    Args:
        loss_weight: multiplier of the loss, ``>= 0``.
        alpha: exponent of the spectrum weight, ``>= 0``; ``alpha = 0`` gives uniform weights, i.e. a plain
            spectral mean squared error.
        patch_factor: number of patches per side, ``>= 1``; ``H`` and ``W`` must be divisible by it.
        ave_spectrum: average the spectra over the batch before comparing them.
        log_matrix: use ``log(1 + D ** alpha)`` as the unnormalized weight.
        batch_matrix: normalize the weight by its maximum over the whole batch instead of per spectrum.

    Raises:
        ValueError: for a negative ``loss_weight`` or ``alpha``, or a ``patch_factor`` that is not a positive int.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        alpha: float = 1.0,
        patch_factor: int = 1,
        ave_spectrum: bool = False,
        log_matrix: bool = False,
        batch_matrix: bool = False,
    ) -> None:
        super().__init__()
        if loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}.")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if isinstance(patch_factor, bool) or not isinstance(patch_factor, int) or patch_factor < 1:
            raise ValueError(f"patch_factor must be a positive int, got {patch_factor!r}.")
        self.loss_weight = float(loss_weight)
        self.alpha = float(alpha)
        self.patch_factor = patch_factor
        self.ave_spectrum = bool(ave_spectrum)
        self.log_matrix = bool(log_matrix)
        self.batch_matrix = bool(batch_matrix)

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Orthonormal 2-D DFT of each patch: ``(B, C, H, W)`` real -> ``(B, P, C, H/p, W/p)`` complex64."""
        b, c, h, w = x.shape
        p = self.patch_factor
        # patches in row-major order, as the reference package stacks them
        patches = x.reshape(b, c, p, h // p, p, w // p).permute(0, 2, 4, 1, 3, 5)  # B, p, p, C, h, w
        patches = patches.reshape(b, p * p, c, h // p, w // p)  # B, P, C, h, w
        return torch.fft.fft2(patches, norm="ortho")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: reconstruction, shape ``(B, C, H, W)``, floating point, any range.
            target: original image, same shape as ``pred``.

        Returns:
            Scalar float32 tensor, ``>= 0``; zero when ``pred == target``.

        Raises:
            TypeError: when an input is not a floating point tensor.
            ValueError: when the shapes differ, are not 4-D, or ``H``/``W`` are not divisible by ``patch_factor``.
        """
        _check_pair(pred, target)
        h, w = pred.shape[-2:]
        if h % self.patch_factor or w % self.patch_factor:
            raise ValueError(
                f"image height and width must be divisible by patch_factor={self.patch_factor}, got H={h}, W={w}."
            )
        # half-precision FFTs only exist for power-of-two sizes on CUDA and lose the small spectral terms
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred_freq = self._spectrum(pred.float())
            target_freq = self._spectrum(target.float())
            if self.ave_spectrum:
                pred_freq = pred_freq.mean(0, keepdim=True)
                target_freq = target_freq.mean(0, keepdim=True)
            diff = pred_freq - target_freq
            distance = diff.real.square() + diff.imag.square()  # B, P, C, h, w
            weight = self._weight(distance.detach())
            loss = (weight * distance).mean()
        return loss * self.loss_weight

    def _weight(self, distance: torch.Tensor) -> torch.Tensor:
        """Spectrum weight of eq. 14 in ``[0, 1]`` from the detached squared distance ``(B, P, C, h, w)``."""
        weight = distance.sqrt() ** self.alpha
        if self.log_matrix:
            weight = torch.log1p(weight)
        if self.batch_matrix:
            peak = weight.amax()
        else:
            peak = weight.amax(dim=(-2, -1), keepdim=True)
        # an all-zero spectrum (pred == target there) gets weight 0, as the reference's NaN -> 0 rule gives
        weight = weight / torch.where(peak > 0, peak, torch.ones_like(peak))
        return weight.clamp(0.0, 1.0)


class USFMReconstructionLoss(nn.Module):
    """USFM masked-image-modeling loss ``L1(pred, target) + lambda_freq * FFL(pred, target)`` (eq. 11-14).

    ``L1`` is the mean absolute error over all pixels (eq. 12) and ``FFL`` is :class:`FocalFrequencyLoss` with
    ``loss_weight=1`` (eq. 13-14). The paper sets ``lambda_freq = 0.4`` by grid search (§4.2). Callable as
    ``loss(pred, target)``, so it can be the ``loss_function`` of a MONAI ``SupervisedTrainer``.

    Args:
        lambda_freq: weight of the frequency term, ``>= 0``.
        alpha: exponent of the focal spectrum weight (eq. 14), ``>= 0``.
        use_frequency_loss: ``False`` drops the frequency term and leaves the plain L1 loss.

    Raises:
        ValueError: for a negative ``lambda_freq`` or ``alpha``.
    """

    def __init__(self, lambda_freq: float = 0.4, alpha: float = 1.0, use_frequency_loss: bool = True) -> None:
        super().__init__()
        if lambda_freq < 0:
            raise ValueError(f"lambda_freq must be >= 0, got {lambda_freq}.")
        self.lambda_freq = float(lambda_freq)
        self.use_frequency_loss = ensure_bool("use_frequency_loss", use_frequency_loss)
        self.frequency_loss = FocalFrequencyLoss(loss_weight=1.0, alpha=alpha)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: reconstructed image ``U_rec``, shape ``(B, C, H, W)``, floating point, nominally in ``[0, 1]``.
            target: original image ``U``, same shape.

        Returns:
            Scalar tensor, ``>= 0``.

        Raises:
            TypeError: when an input is not a floating point tensor.
            ValueError: when the shapes differ or are not 4-D.
        """
        _check_pair(pred, target)
        loss = F.l1_loss(pred, target, reduction="mean")
        if self.use_frequency_loss:
            loss = loss + self.lambda_freq * self.frequency_loss(pred, target)
        return loss


def balanced_class_weights(
    items, num_classes: int, enabled: bool = True, device: torch.device | str | None = None, label_key: str = "label"
) -> torch.Tensor | None:
    """Cross-entropy class weights ``N / (K · n_c)`` from a classification datalist (scikit-learn's "balanced").

    With BUSI's 56 % benign images an unweighted ViT learns the class prior first and, at a small budget, never
    leaves it (macro-F1 0.24); weighting the classes by inverse frequency makes every class count equally.

    Args:
        items: datalist items with an int ``label_key`` (a deferred synthetic datalist is read from its plan:
            :func:`~usfm_monai.data.datalist.planned_items`, nothing is generated).
        num_classes: K.
        enabled: ``False`` returns ``None`` (an unweighted loss), so a bundle switch maps onto this one call.
        device: device of the weights (the loss's device).
        label_key: key of the class index.

    Returns:
        ``(K,)`` float32 weights (mean 1 over the items), or ``None`` when not ``enabled``.

    Raises:
        ValueError: no items, a label outside ``[0, K)``, or a class without any item (its weight would be
            infinite: say which).
    """
    if not ensure_bool("class_balanced", enabled):
        return None
    labels = [item.get(label_key) for item in planned_items(items)]
    if not labels:
        raise ValueError("balanced_class_weights: the datalist has no items.")
    bad = [(i, lab) for i, lab in enumerate(labels) if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < num_classes]
    if bad:
        raise ValueError(f"balanced_class_weights: item {bad[0][0]} has {label_key}={bad[0][1]!r}, expected an int in [0, {num_classes}).")
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_classes).float()
    if (counts == 0).any():
        missing = [c for c in range(num_classes) if counts[c] == 0]
        raise ValueError(f"balanced_class_weights: classes {missing} have no training item; cannot balance them.")
    return (len(labels) / (num_classes * counts)).to(device)
