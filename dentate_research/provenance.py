"""Provenance shared by every record the package writes: installed versions of Python and libraries.

Low-level (standard library only) so that training (``run_info.json``) and inference (``X_metadata.json``) report
versions through one function.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable

# what shapes a segmentation result (X_metadata.json "versions")
INFERENCE_PACKAGES = ("dentate_research", "torch", "monai", "nnunetv2", "numpy", "scipy", "nibabel")
# what shapes a training run (run_info.json "versions")
TRAINING_PACKAGES = ("dentate_research", "torch", "monai", "nnunetv2", "dynamic_network_architectures", "numpy",
                     "hydra-core", "wandb")


def package_versions(packages: Iterable[str] = INFERENCE_PACKAGES, *, missing: str | None = None,
                     with_platform: bool = False) -> dict[str, str | None]:
    """``{"python": ..., [ "platform": ...,] package: version}`` for the installed distributions.

    Args:
        packages: distribution names to report, in this order.
        missing: value reported for a package that is not installed.
        with_platform: also report ``platform.platform()`` (OS, kernel, architecture).
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    if with_platform:
        versions["platform"] = platform.platform()
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = missing
    return versions
