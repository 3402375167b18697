"""Classical (non-deep-learning) baselines: template building, atlas registration, threshold + region growing."""

from .atlas import AtlasBaseline
from .classical import ClassicalBaseline, ClassicalParams, warp_template
from .template import Template, build_template, check_no_overlap

BASELINES = {"classical": ClassicalBaseline, "atlas": AtlasBaseline}

__all__ = ["BASELINES", "AtlasBaseline", "ClassicalBaseline", "ClassicalParams", "Template", "build_template",
           "check_no_overlap", "warp_template"]
