"""Image units: the one conversion of a case's image to ppm, from the manifest's optional ``units`` column.

Allowed units: ``ppm`` (also an empty/missing value, the default) and ``ppb`` (values x 1000, converted by
x 1e-3); anything else is a :class:`~dentate_research.data.io.DataError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .io import DataError, Volume, load_image

if TYPE_CHECKING:
    from .manifest import Case

# image units (lower case) -> factor to ppm; '' = no units given (ppm)
UNIT_TO_PPM = {"": 1.0, "ppm": 1.0, "ppb": 1e-3}


def normalized_units(units: object) -> str:
    """Units as the conversion table spells them: stripped, lower case, '' for None."""
    return "" if units is None else str(units).strip().lower()


def ppm_factor(units: object, what: str = "image") -> float:
    """Factor that converts values in ``units`` to ppm; DataError naming ``what`` for unknown units."""
    key = normalized_units(units)
    if key not in UNIT_TO_PPM:
        raise DataError(f"{what}: image units '{key}' cannot be converted to ppm; "
                        f"allowed: {sorted(u for u in UNIT_TO_PPM if u)} (manifest column 'units')")
    return UNIT_TO_PPM[key]


def array_in_ppm(array: np.ndarray, units: object, what: str = "image") -> np.ndarray:
    """``array`` (values in ``units``) in ppm, as float32 x float32 factor; the same array when already ppm."""
    factor = ppm_factor(units, what)
    return array if factor == 1.0 else array * np.float32(factor)


def case_image_in_ppm(case: Case, image: Volume) -> Volume:
    """``image`` (the case's image, already loaded) in ppm according to the manifest's ``units`` column."""
    factor = ppm_factor(case.meta.get("units"), f"case {case.case_id}")
    return image if factor == 1.0 else image.with_array(image.array * np.float32(factor))


def load_case_image_ppm(case: Case) -> Volume:
    """A case's image (canonical RAS) converted to ppm using the manifest's optional ``units`` column."""
    return case_image_in_ppm(case, load_image(case.image))
