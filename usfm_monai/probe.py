"""Representation probes: did pretraining learn anything, measured without a fine-tuning recipe.

A frozen encoder embeds every image of a classification datalist; two classifiers that cannot change the
encoder are fitted on the training features and scored on the test features:

- **kNN** (cosine, ``k = 10``, majority vote) on standardized features;
- **linear probe**: multinomial logistic regression on standardized features, balanced class weights, its
  inverse regularisation ``C`` chosen on the *validation* split from a fixed grid (never on the test split).

The features of one image are the **mean-pooled patch tokens** of a few blocks (default: after blocks
``depth/4, depth/2, 3·depth/4, depth``, i.e. 3, 6, 9, 12 of a 12-block encoder), taken before the final norm.
The headline probe ("multi") concatenates the standardized levels: this is fixed in advance, because masked
image models are known to keep their most linearly separable features in the middle blocks while the last
blocks specialise in pixel prediction (He et al., MAE, arXiv 2111.06377, §4; Xie et al., SimMIM,
arXiv 2111.09886). Each level is also probed alone and reported, as a diagnostic.

The paper's Fig. 7 (2-D embedding of frozen features coloured by class, random vs pretrained) is
:func:`embedding_figure` (UMAP by default, t-SNE as the alternative).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import PathLike
from monai.transforms import Compose, EnsureTyped, LoadImaged, Resized

from usfm_monai.io import atomic_write, load_torch_file
from usfm_monai.networks.encoder import USFMEncoder, create_usfm_encoder
from usfm_monai.networks.weights import load_encoder_weights
from usfm_monai.transforms import EnsureGrayscaled, ScaleIntensity8Bitd

__all__ = [
    "DEFAULT_C_GRID",
    "LinearProbeFit",
    "ProbeFeatures",
    "build_probe_encoder",
    "default_probe_levels",
    "embedding_figure",
    "extract_features",
    "fit_linear_probe",
    "knn_probe",
    "linear_probe",
    "load_probe_images",
    "probe_encoder",
]

logger = logging.getLogger(__name__)

#: Inverse regularisation strengths tried by the linear probe (chosen on the validation split).
DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


def default_probe_levels(depth: int) -> list[int]:
    """Block indices (0-based) probed by default: after blocks ``depth/4, depth/2, 3·depth/4, depth``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}.")
    return sorted({max(0, round(depth * q) - 1) for q in (0.25, 0.5, 0.75, 1.0)})


def build_probe_encoder(
    encoder: str | None,
    size: str = "tiny",
    img_size: int | Sequence[int] = 128,
    seed: int = 0,
) -> USFMEncoder:
    """The frozen encoder to probe: ``None``/``"random"`` (seeded random weights) or an encoder file.

    Args:
        encoder: ``None`` or ``"random"`` for a randomly initialised encoder (``torch.manual_seed(seed)``), or
            a file :func:`~usfm_monai.networks.weights.load_encoder_weights` reads (the pretrain bundle's
            ``models/usfm_encoder.pt``, a converted authors' checkpoint, a whole-network checkpoint).
        size: encoder size of a random encoder, or of a file without a ``config``.
        img_size: probe input size (the position tables of a file are resized to it when needed).
        seed: seed of a random encoder.

    Returns:
        The encoder in eval mode, without gradients.

    Raises:
        FileNotFoundError: ``encoder`` is a path that does not exist.
    """
    config: Mapping[str, Any] = {}
    saved: Any = None
    if encoder not in (None, "random"):
        path = os.fspath(encoder)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"encoder file not found: {path!r} (or pass 'random').")
        saved = load_torch_file(path, "encoder weights")  # read once: its config builds the network, then loads
        config = saved.get("config", {}) if isinstance(saved, Mapping) else {}
    # architecture from the file's config when it has one (width, depth, heads ...); input size from the probe
    keep = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "in_chans", "init_values", "use_fc_norm")
    kwargs = {k: config[k] for k in keep if k in config}
    kwargs.setdefault("use_fc_norm", False)
    torch.manual_seed(seed)
    model = create_usfm_encoder(size=size, img_size=img_size, drop_path_rate=0.0, **kwargs)
    if saved is not None:
        try:
            load_encoder_weights(model, saved, strict=True)
        except (KeyError, TypeError, ValueError) as err:  # loaded from memory: put the file name back in
            raise ValueError(f"{os.fspath(encoder)}: {err}") from err
    return model.eval().requires_grad_(False)


def load_probe_images(
    items: Sequence[Mapping[str, Any]], image_size: int, image_key: str = "image"
) -> torch.Tensor:
    """Decode, grey, scale to [0, 1] and resize every item's image once: ``(N, 1, S, S)`` float32 (the
    classification bundle's deterministic preprocessing; 8-bit images only).

    Raises:
        RuntimeError: an image cannot be read (the message names it).
    """
    transform = Compose(
        [
            LoadImaged(keys=image_key, image_only=True, ensure_channel_first=True),
            EnsureGrayscaled(keys=image_key),
            ScaleIntensity8Bitd(keys=image_key),
            Resized(keys=image_key, spatial_size=(image_size, image_size), mode="bilinear"),
            EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False),
        ]
    )
    images = []
    for item in items:
        try:
            images.append(transform({image_key: item[image_key]})[image_key])
        except Exception as err:  # a MONAI/PIL failure deep in the loader: name the file
            raise RuntimeError(f"probe: cannot load {item.get(image_key)!r}: {err}") from err
    return torch.stack(images)


@torch.no_grad()
def extract_features(
    encoder: USFMEncoder,
    images: torch.Tensor,
    levels: Sequence[int] | None = None,
    batch_size: int = 64,
) -> dict[int, np.ndarray]:
    """Mean-pooled patch tokens of each probed block: ``{block_index: (N, D) float32}``.

    The encoder's train/eval mode is restored afterwards (the probe handler calls this mid-training).
    """
    levels = default_probe_levels(len(encoder.blocks)) if levels is None else [int(i) for i in levels]
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out: dict[int, list[np.ndarray]] = {i: [] for i in levels}
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            feats = encoder.forward_intermediates(batch, indices=levels, output_fmt="NLC", intermediates_only=True)
            for i, f in zip(levels, feats):
                out[i].append(f.float().mean(dim=1).cpu().numpy())  # B, N, D -> B, D
    finally:
        encoder.train(was_training)
    return {i: np.concatenate(v) for i, v in out.items()}


def _feature_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (+ 1e-6, so constant features stay finite) of the training features."""
    return train.mean(0), train.std(0) + 1e-6


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = _feature_stats(train)
    return [(a - mean) / std for a in (train, *others)]


def _scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(num_classes)), zero_division=0)),
    }


def knn_probe(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, k: int = 10
) -> dict[str, float]:
    """Cosine kNN (majority vote of ``k`` neighbours) on features standardized with the training statistics."""
    from sklearn.neighbors import KNeighborsClassifier

    train, test = _standardize(train, test)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train)), metric="cosine").fit(train, y_train)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return _scores(y_test, knn.predict(test), num_classes)


@dataclass(frozen=True)
class LinearProbeFit:
    """A logistic regression fitted on standardized features, its ``C`` chosen on validation macro-F1.

    Attributes:
        classifier: the fitted ``sklearn.linear_model.LogisticRegression`` (on standardized features).
        mean, std: the training statistics that standardize a feature, ``(D,)``.
        C: the chosen inverse regularisation strength.
        val_f1: its validation macro-F1.
    """

    classifier: Any
    mean: np.ndarray
    std: np.ndarray
    C: float
    val_f1: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class indices of raw ``(N, D)`` features."""
        return self.classifier.predict((features - self.mean) / self.std)

    def linear_layer(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """The same classifier as a linear layer on raw features: ``(K, D)`` weight and ``(K,)`` bias whose
        softmax equals the regression's probabilities (standardization folded in; a binary regression's
        single logit becomes ``[0, z]``; a class absent from training gets zero weight and the
        lowest bias, so among the trained classes the probabilities stay the regression's)."""
        coef = self.classifier.coef_ / self.std
        intercept = self.classifier.intercept_ - coef @ self.mean
        classes = [int(c) for c in self.classifier.classes_]
        if len(classes) == 2:  # sklearn keeps one logit for two classes: that of classes[1] against classes[0]
            coef = np.stack([np.zeros_like(coef[0]), coef[0]])
            intercept = np.array([0.0, intercept[0]])
        weight = np.zeros((num_classes, coef.shape[1]), dtype=np.float64)
        bias = np.full(num_classes, float(intercept.min()), dtype=np.float64)
        weight[classes], bias[classes] = coef, intercept
        return weight, bias


def fit_linear_probe(
    train: np.ndarray,
    y_train: np.ndarray,
    val: np.ndarray,
    y_val: np.ndarray,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
) -> LinearProbeFit:
    """Fit the linear probe: balanced-class-weight logistic regression on standardized features, for each ``C``
    of ``c_grid``; keep the one with the best validation macro-F1 (the first on ties)."""
    from sklearn.linear_model import LogisticRegression

    if len(val) == 0:
        raise ValueError("the linear probe needs a non-empty validation split to choose its regularisation.")
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"the linear probe needs at least two classes in training, got {np.unique(y_train).tolist()}.")
    mean, std = _feature_stats(train)
    train_z, val_z = (train - mean) / std, (val - mean) / std
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    best: tuple[float, float, Any] | None = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(train_z, y_train)
        val_f1 = _scores(y_val, clf.predict(val_z), num_classes)["f1"]
        if best is None or val_f1 > best[0]:
            best = (val_f1, c, clf)
    val_f1, c, clf = best
    return LinearProbeFit(classifier=clf, mean=mean, std=std, C=float(c), val_f1=float(val_f1))


def linear_probe(
    train: np.ndarray,
    y_train: np.ndarray,
    val: np.ndarray,
    y_val: np.ndarray,
    test: np.ndarray,
    y_test: np.ndarray,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
) -> dict[str, float]:
    """:func:`fit_linear_probe` on training/validation, scored on test.

    Returns:
        ``{"acc", "f1", "val_f1", "C"}``.
    """
    fit = fit_linear_probe(train, y_train, val, y_val, c_grid)
    num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    return dict(_scores(y_test, fit.predict(test), num_classes), val_f1=fit.val_f1, C=fit.C)


class ProbeFeatures:
    """Images and labels of the train/validation/test splits, decoded once; probes any number of encoders.

    Args:
        splits: ``{"training": items, "validation": items, "test": items}`` (classification datalist items with
            an ``image`` path and an int ``label``).
        image_size: probe input size.
    """

    def __init__(self, splits: Mapping[str, Sequence[Mapping[str, Any]]], image_size: int) -> None:
        for name in ("training", "validation", "test"):
            if not splits.get(name):
                raise ValueError(f"probe: the datalist has no {name!r} items; the probe needs all three splits.")
        self.image_size = int(image_size)
        self.images = {name: load_probe_images(items, self.image_size) for name, items in splits.items()}
        self.labels = {}
        for name, items in splits.items():
            labels = [item.get("label") for item in items]
            bad = [(i, lab) for i, lab in enumerate(labels) if isinstance(lab, bool) or not isinstance(lab, int)]
            if bad:
                raise TypeError(f"probe: {name} item {bad[0][0]} has label {bad[0][1]!r}; expected an int class index.")
            self.labels[name] = np.asarray(labels, dtype=np.int64)
        num_classes = int(max(int(v.max()) for v in self.labels.values())) + 1
        names = {int(it["label"]): str(it["class_name"]) for items in splits.values() for it in items if "class_name" in it}
        #: legend names of labels 0 .. K-1 (the items' ``class_name`` when they have one)
        self.class_names = [names.get(c, str(c)) for c in range(num_classes)]

    @classmethod
    def from_datalist(
        cls,
        dataset_dir: PathLike,
        datalist_file: PathLike | None,
        image_size: int,
        synthetic_dir: PathLike | None = None,
    ) -> "ProbeFeatures":
        """Read the three splits with :func:`usfm_monai.data.datalist.resolve_datalist` (task classification)."""
        from usfm_monai.data.datalist import resolve_datalist

        splits = {
            s: resolve_datalist(dataset_dir, datalist_file, section=s, task="classification", synthetic_dir=synthetic_dir)
            for s in ("training", "validation", "test")
        }
        return cls(splits, image_size)

    def features(self, encoder: USFMEncoder, levels: Sequence[int] | None = None) -> dict[str, dict[int, np.ndarray]]:
        """``{split: {block: (N, D)}}`` for one encoder (blocks 0-based)."""
        return {name: extract_features(encoder, images, levels) for name, images in self.images.items()}

    @staticmethod
    def stack(feats: Mapping[str, Mapping[int, np.ndarray]], split: str, levels: Sequence[int]) -> np.ndarray:
        """The multi-level feature of ``split``: each level standardized with the training statistics, then
        concatenated, so that no level dominates the distances. ``(N, sum of widths)``."""
        return np.concatenate([_standardize(feats["training"][i], feats[split][i])[1] for i in levels], axis=1)

    def probe(
        self, encoder: USFMEncoder, levels: Sequence[int] | None = None, k: int = 10, per_level: bool = True
    ) -> dict[str, Any]:
        """Probe one encoder: kNN and linear probe on the multi-level features (and on each level alone).

        Returns:
            ``{"knn_acc", "knn_f1", "linear_acc", "linear_f1", "linear_val_f1", "linear_C", "prior_acc",
            "levels": [...], "per_level": {block: {...}}}``; blocks are 1-based (block 12 = the last of 12).
        """
        return self.score(self.features(encoder, levels), k=k, per_level=per_level)

    def score(
        self, feats: Mapping[str, Mapping[int, np.ndarray]], k: int = 10, per_level: bool = True
    ) -> dict[str, Any]:
        """:meth:`probe` on features already extracted by :meth:`features` (no second forward pass)."""
        y = self.labels
        used = sorted(feats["training"])

        def run(select: Sequence[int]) -> dict[str, float]:
            tr, va, te = (self.stack(feats, split, select) for split in ("training", "validation", "test"))
            knn = knn_probe(tr, y["training"], te, y["test"], k=k)
            lin = linear_probe(tr, y["training"], va, y["validation"], te, y["test"])
            return {
                "knn_acc": knn["acc"],
                "knn_f1": knn["f1"],
                "linear_acc": lin["acc"],
                "linear_f1": lin["f1"],
                "linear_val_f1": lin["val_f1"],
                "linear_C": lin["C"],
            }

        result: dict[str, Any] = dict(run(used))
        counts = np.bincount(y["training"])
        result["prior_acc"] = float(np.mean(y["test"] == int(counts.argmax())))
        result["levels"] = [i + 1 for i in used]
        if per_level:
            result["per_level"] = {str(i + 1): run([i]) for i in used}
        return result


def probe_encoder(
    encoders: Sequence[str] | str = "random",
    dataset_dir: PathLike = "synthetic",
    datalist_file: PathLike | None = None,
    image_size: int = 128,
    size: str = "tiny",
    seed: int = 0,
    k: int = 10,
    per_level: bool = True,
    synthetic_dir: PathLike | None = "data/synthetic_classification",
    embedding: PathLike | None = None,
    embedding_method: str = "umap",
    output: PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Probe frozen encoders on a classification datalist: kNN and linear probe, test accuracy and macro-F1.

    The images are decoded once for all encoders. Command line::

        usfm-monai probe --encoders "['random','bundles/pretrain_usfm/models/usfm_encoder.pt']" \
            --dataset_dir /data/Dataset_BUSI_with_GT --datalist_file data_lists/busi_classification.json \
            --image_size 128 --embedding fig7.png --output probe.json

    Args:
        encoders: ``"random"`` and/or encoder files (see :func:`build_probe_encoder`).
        dataset_dir: the dataset folder, or ``"synthetic"`` (the synthetic classification set, made on first use
            in ``synthetic_dir``).
        datalist_file: classification datalist with ``training``, ``validation`` and ``test`` sections.
        image_size: probe input size (the encoders' position tables are resized to it when needed).
        size: size of the random encoder.
        seed: seed of the random encoder and of the embedding.
        k: neighbours of the kNN probe.
        per_level: also probe every level alone (slower; a diagnostic).
        synthetic_dir: folder of the synthetic dataset.
        embedding: write the Fig. 7 PNG here (one panel per encoder, test-split multi-level features).
        embedding_method: ``"umap"`` or ``"tsne"``.
        output: write the results as JSON here.

    Returns:
        ``{encoder: results}`` (see :meth:`ProbeFeatures.probe`).
    """
    names = [encoders] if isinstance(encoders, str) else [str(e) for e in encoders]
    data = ProbeFeatures.from_datalist(dataset_dir, datalist_file, image_size, synthetic_dir=synthetic_dir)
    results: dict[str, dict[str, Any]] = {}
    panels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        feats = data.features(build_probe_encoder(name, size, image_size, seed))
        results[name] = data.score(feats, k=k, per_level=per_level)
        logger.info("probe %s: %s", name, {key: v for key, v in results[name].items() if key != "per_level"})
        if embedding is not None:
            title = "random encoder" if name == "random" else os.path.basename(os.path.dirname(os.path.dirname(
                os.path.abspath(name)))) + "/" + os.path.basename(name)
            panels[title] = (data.stack(feats, "test", sorted(feats["test"])), data.labels["test"])
    if embedding is not None:
        embedding_figure(panels, data.class_names, embedding, method=embedding_method, seed=seed)
    if output is not None:
        from usfm_monai.io import save_json_atomic

        save_json_atomic(results, output)
    return results


def embedding_figure(
    features: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    path: PathLike,
    method: str = "umap",
    seed: int = 0,
) -> str:
    """The paper's Fig. 7: one 2-D embedding panel per encoder, points coloured by class, as a PNG.

    Args:
        features: ``{panel title: (features (N, D), labels (N,))}``, e.g. random vs pretrained encoder.
        class_names: legend names of labels ``0 .. K-1``.
        path: PNG to write (atomically).
        method: ``"umap"`` (umap-learn) or ``"tsne"`` (scikit-learn).
        seed: seed of the embedding.

    Returns:
        ``path`` as a string.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if method not in ("umap", "tsne"):
        raise ValueError(f"method must be 'umap' or 'tsne', got {method!r}.")
    fig, axes = plt.subplots(1, len(features), figsize=(4.2 * len(features), 4.0), squeeze=False)
    for ax, (title, (feats, labels)) in zip(axes[0], features.items()):
        (x,) = _standardize(np.asarray(feats, dtype=np.float32))
        if method == "umap":
            import umap

            xy = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(x)
        else:
            from sklearn.manifold import TSNE

            xy = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
        for c, name in enumerate(class_names):
            sel = np.asarray(labels) == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.75, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(loc="best", fontsize=8, markerscale=2)
    fig.suptitle(f"frozen encoder features ({method.upper()}), coloured by class", fontsize=11)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
