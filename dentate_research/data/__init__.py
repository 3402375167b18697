"""Data stage: NIfTI I/O, geometry, laterality, manifests, splits, the QSM phantom generator, nnU-Net export."""
