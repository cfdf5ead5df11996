"""PeakNet (ConvNeXt-V2 + BiFPN + segmentation head) and the threshold test oracle.

Importing this package imports torch (and nothing heavier: the backbone is written here).
"""

from .peaknet import STRIDE, PeakNet, PeakNetSpec
from .threshold import ThresholdModel
from .weights import (
    WeightsError,
    build_model,
    count_parameters,
    load_weights,
    meta_model,
    read_state_dict,
    save_weights,
    state_dict_mismatch,
)

__all__ = [
    "STRIDE",
    "PeakNet",
    "PeakNetSpec",
    "ThresholdModel",
    "WeightsError",
    "build_model",
    "count_parameters",
    "load_weights",
    "meta_model",
    "read_state_dict",
    "save_weights",
    "state_dict_mismatch",
]
