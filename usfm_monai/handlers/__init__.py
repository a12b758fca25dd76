"""MONAI/Ignite handlers: atomic checkpoints and resume, NaN guard, progress, figures, encoder export."""

from usfm_monai.handlers.checkpoint import (
    BestMetricState,
    BestModelSaver,
    GeneratorState,
    TorchRNGState,
    TrainingCheckpoint,
    state_dicts,
)
from usfm_monai.handlers.checkpoint_loader import CheckpointLoader
from usfm_monai.handlers.classification import (
    ClassificationPredictionSaver,
    ClassificationReport,
    confusion_matrix_figure,
    per_class_scores,
)
from usfm_monai.handlers.enhancement import (
    SideBySideWriter,
    load_target_image,
    side_by_side,
)
from usfm_monai.handlers.encoder_weights import EncoderWeightsLoader
from usfm_monai.handlers.export import EncoderExport
from usfm_monai.handlers.figures import ReconstructionFigures, masked_views
from usfm_monai.handlers.linear_probe_head import LinearProbeHeadInit
from usfm_monai.handlers.metric_summary import MetricSummary
from usfm_monai.handlers.nan_guard import NaNGuard
from usfm_monai.handlers.probe import RepresentationProbe
from usfm_monai.handlers.progress import ProgressBar, every_n_iterations
from usfm_monai.handlers.segmentation import SegmentationOverlay, overlay_mask

__all__ = [
    "ClassificationPredictionSaver",
    "ClassificationReport",
    "BestMetricState",
    "BestModelSaver",
    "CheckpointLoader",
    "EncoderExport",
    "EncoderWeightsLoader",
    "GeneratorState",
    "LinearProbeHeadInit",
    "MetricSummary",
    "NaNGuard",
    "ProgressBar",
    "ReconstructionFigures",
    "RepresentationProbe",
    "SegmentationOverlay",
    "SideBySideWriter",
    "TorchRNGState",
    "TrainingCheckpoint",
    "confusion_matrix_figure",
    "every_n_iterations",
    "load_target_image",
    "masked_views",
    "overlay_mask",
    "per_class_scores",
    "side_by_side",
    "state_dicts",
]
