"""PeakNet (ConvNeXt-V2 + BiFPN + segmentation head) and the threshold test oracle.

Importing this package imports torch; transformers is imported only when a PeakNet is built.
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
