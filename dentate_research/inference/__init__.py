"""Inference stage: two-step (localize -> crop -> segment) DN segmentation, post-processing and outputs."""

from .pipeline import DentatePredictor, SegmentationError, SegmentationResult, resolve_model_dir
from .protocol import StageModel

__all__ = ["DentatePredictor", "SegmentationError", "SegmentationResult", "StageModel", "resolve_model_dir"]
