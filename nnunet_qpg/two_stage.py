"""The paper's two-stage KiTS19 pipeline on a CT volume: kidney model per slice, then tumour model per region.

Training data (the converter, SPEC section 6) defines what each model expects:
  stage 1: the kidney model sees whole axial slices and predicts kidney-or-tumour (label > 0);
  stage 2: the tumour model sees each 8-connected region of that mask, cropped to its tight bounding box from
           the slice filtered at native resolution (window + filters first, then crop, then resize), and
           predicts tumour inside the crop.
Each model uses the preprocessing recorded in its own dataset.json (they may differ). Tumour pixels are pasted
back only inside the region they were predicted for (the crop's corners may hold another region or background),
giving KiTS19 labels: 0 background, 1 kidney, 2 tumour.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_qpg.dataset_conversion.kits19_slices import EIGHT_CONNECTED
from nnunet_qpg.imaging.resizing import resize_mask_to
from nnunet_qpg.inference import AxialVolume, SlicePreprocessing, predict_slice

KIDNEY_LABEL, TUMOR_LABEL = 1, 2


def kits19_labels_of_slice(slice_hu: np.ndarray, kidney_predictor, kidney_preprocessing: SlicePreprocessing,
                           tumor_predictor, tumor_preprocessing: SlicePreprocessing) -> np.ndarray:
    """KiTS19 label map (0/1/2) of one native-resolution axial slice."""
    kidney = resize_mask_to(predict_slice(kidney_predictor, kidney_preprocessing(slice_hu)), slice_hu.shape) > 0
    labels = kidney.astype(np.uint8) * KIDNEY_LABEL
    if not kidney.any():
        return labels
    regions, _ = ndimage.label(kidney, structure=EIGHT_CONNECTED)
    filtered = tumor_preprocessing.filtered(slice_hu)
    for region, box in enumerate(ndimage.find_objects(regions), start=1):
        crop = filtered[box]
        tumor_small = predict_slice(tumor_predictor, tumor_preprocessing.resized(crop))
        tumor = (resize_mask_to(tumor_small, crop.shape) > 0) & (regions[box] == region)
        labels[box][tumor] = TUMOR_LABEL
    return labels


def predict_kits19_volume(volume: AxialVolume, kidney_predictor, kidney_preprocessing: SlicePreprocessing,
                          tumor_predictor, tumor_preprocessing: SlicePreprocessing,
                          on_slice: Callable[[], None] | None = None) -> sitk.Image:
    """KiTS19 labels for every axial slice of `volume`, with the input's exact geometry."""
    return volume.label_slices(
        lambda slice_hu: kits19_labels_of_slice(slice_hu, kidney_predictor, kidney_preprocessing,
                                                tumor_predictor, tumor_preprocessing), on_slice)
