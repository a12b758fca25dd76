"""Linear probing, then fine-tuning (LP-FT; Kumar et al., ICLR 2022) for the USFM classifier.

A pretrained encoder fine-tuned from a near-zero head (the BEiT/authors' init) with layer-wise learning-rate
decay spends the first iterations learning the head while the encoder's features drift under a near-random
head's gradients. With few labels the run ends before the head has caught up: on BUSI at 20 % labels the
fine-tuned pretrained ViT scored *below* a logistic regression on its own frozen features. LP-FT starts
fine-tuning from that regression instead: the head is set to the linear probe of the pretrained features, so
the first gradients already point somewhere useful.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset

from usfm_monai.networks.weights import unwrap_model
from usfm_monai.probe import DEFAULT_C_GRID, fit_linear_probe

__all__ = ["LinearProbeHeadInit"]

logger = logging.getLogger(__name__)


class LinearProbeHeadInit:
    """Set a classifier's head to a linear probe of its frozen features before the first iteration (LP-FT).

    At ``Events.STARTED`` of a fresh run (a resumed run keeps its trained head), the network in eval mode embeds
    the training and validation items with ``network.forward_features`` (the pooled, normalized features the
    head sees); a balanced-class-weight logistic regression is fitted on the training features, its ``C``
    chosen by validation macro-F1 (:func:`usfm_monai.probe.fit_linear_probe`), and copied into
    ``network.head``. Sets ``engine.state.linear_probe`` to ``{"C", "val_f1"}`` and logs it. Every rank computes
    the same fit, so DDP replicas stay identical.

    Args:
        network: a classifier with ``forward_features(x) -> (B, D)`` and a ``head`` ``nn.Linear(D, K)``
            (:class:`usfm_monai.networks.USFMClassifier`); DDP-wrapped or compiled is fine.
        datalist: training items (``image`` and int ``label``).
        val_datalist: validation items that choose the regularisation.
        transform: deterministic preprocessing of an item (the validation transforms: no augmentation).
        enabled: ``False`` leaves the head as initialised (the config ties it to whether weights are loaded).
        batch_size: feature extraction batch size.
        c_grid: regularisation strengths tried.
        device: where the images go; default: the network's device.

    Raises:
        TypeError: ``enabled`` not a bool, or the network lacks ``forward_features``/``head``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        datalist: Sequence[Mapping[str, Any]],
        val_datalist: Sequence[Mapping[str, Any]],
        transform: Callable,
        enabled: bool = True,
        batch_size: int = 32,
        c_grid: Sequence[float] = DEFAULT_C_GRID,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}.")
        model = unwrap_model(network)
        if not callable(getattr(model, "forward_features", None)) or not isinstance(
            getattr(model, "head", None), torch.nn.Linear
        ):
            raise TypeError(
                f"LinearProbeHeadInit needs a classifier with forward_features() and a Linear head, "
                f"got {type(model).__name__}."
            )
        self.model = model
        self.datalist, self.val_datalist = datalist, val_datalist
        self.transform = transform
        self.enabled = enabled
        self.batch_size = batch_size
        self.c_grid = tuple(c_grid)
        self.device = device

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    @torch.no_grad()
    def _features(self, items: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        device = self.device or next(self.model.parameters()).device
        loader = DataLoader(Dataset(list(items), self.transform), batch_size=self.batch_size, shuffle=False)
        feats, labels = [], []
        for batch in loader:
            feats.append(self.model.forward_features(batch["image"].to(device)).float().cpu().numpy())
            labels.append(np.asarray(batch["label"]).reshape(-1))
        return np.concatenate(feats).astype(np.float64), np.concatenate(labels).astype(np.int64)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled or engine.state.iteration > 0:  # resumed: the checkpoint's head is the trained one
            return
        was_training = self.model.training
        self.model.eval()
        try:
            train, y_train = self._features(self.datalist)
            val, y_val = self._features(self.val_datalist)
        finally:
            self.model.train(was_training)
        fit = fit_linear_probe(train, y_train, val, y_val, self.c_grid)
        weight, bias = fit.linear_layer(self.model.head.out_features)
        head = self.model.head
        head.weight.data.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.data.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        engine.state.linear_probe = {"C": fit.C, "val_f1": fit.val_f1}
        logger.info(
            f"head set to the linear probe of the frozen features (LP-FT): C={fit.C:g}, "
            f"validation macro-F1 {fit.val_f1:.4f} ({len(train)} training, {len(val)} validation items)."
        )
