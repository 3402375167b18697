"""DN post-processing lives in :mod:`dentate_research.data.postprocess` (training validation uses it too);
re-exported here for the inference package's callers."""

from dentate_research.data.postprocess import (  # noqa: F401
    PostprocessReport,
    assign_sides_by_world,
    keep_largest_component_per_side,
    postprocess_dn_labels,
    side_statistics,
)
