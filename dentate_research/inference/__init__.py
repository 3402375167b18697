"""Inference stage: two-step (localize -> crop -> segment) DN segmentation in memory (:mod:`.pipeline`),
post-processing, QC, and the writer of the output files (:mod:`.outputs`)."""

from dentate_research.model_contract import StageModel

from .pipeline import DentatePredictor, PredictorMetadata, SegmentationError, SegmentationResult, resolve_model_dir

__all__ = ["DentatePredictor", "PredictorMetadata", "SegmentationError", "SegmentationResult", "StageModel",
           "resolve_model_dir"]
