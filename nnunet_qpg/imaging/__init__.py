"""Pixels and geometry shared by the converter, prediction, evaluation and figures: one module per idea.

- :mod:`~nnunet_qpg.imaging.reading`: the one reader of user images (checks, non-finite voxels);
- :mod:`~nnunet_qpg.imaging.nifti_check`: truncated NIfTI files and non-finite voxels, from the raw file;
- :mod:`~nnunet_qpg.imaging.axial`: the axial axis from the direction matrix, and the one axial view;
- :mod:`~nnunet_qpg.imaging.intensity`: the HU window and the 3x3 mean + 7x7 median filters;
- :mod:`~nnunet_qpg.imaging.resizing`: pixel-centre aligned resizes of images (bilinear) and masks (nearest);
- :mod:`~nnunet_qpg.imaging.case_names`: NIfTI files of a folder by case name, and name collisions.

Nothing here writes files (that is :mod:`nnunet_qpg.safe_io`).
"""
