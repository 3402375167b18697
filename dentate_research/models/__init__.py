"""Network architectures: a registry keyed by name (see :mod:`dentate_research.models.registry`)."""

from .registry import (
    ARCHITECTURES,
    ArchSpec,
    OptimizerSpec,
    available_architectures,
    build_network,
    count_parameters,
    get_arch,
    validate_patch_size,
)

__all__ = ["ARCHITECTURES", "ArchSpec", "OptimizerSpec", "available_architectures", "build_network",
           "count_parameters", "get_arch", "validate_patch_size"]
