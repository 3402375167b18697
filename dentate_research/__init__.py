"""dentate_research: deep-learning segmentation of the cerebellar dentate nucleus in QSM MRI."""

__version__ = "0.1.0"
