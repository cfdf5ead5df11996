"""Where things are in the CXI files the writer produces (Cheetah layout, what CrystFEL reads).

Shared by the file writer (cxi.py) and the geometry file that points CrystFEL at it
(geometry.py); ../shared/reference/cxi-crystfel.md.
"""

import numpy as np

RESULT = "/entry_1/result_1"  # the peak lists: nPeaks and the peak tables
DATA = "/entry_1/data_1/data"  # the frames, (N, C*H, W)
LCLS = "/LCLS"  # per-event metadata, LCLS/Cheetah names
PROV = "/peaknet"  # where each row came from
DETECTOR = "/entry_1/instrument_1/detector_1"  # CXI-standard detector description
ENCODER = f"{LCLS}/detector_1/EncoderValue"  # camera length per event, mm (Cheetah's place)

PEAK_TABLES = {  # dataset -> (PeakList field, dtype)
    "peakXPosRaw": ("col", np.float32),
    "peakYPosRaw": ("row", np.float32),
    "peakTotalIntensity": ("total", np.float32),
    "peakMaxIntensity": ("max", np.float32),
    "peakNPixels": ("npix", np.int32),
}
PIXEL_INDEX = (
    "pixel-index coordinates in the slab layout of /entry_1/data_1/data (panel c of (C, H, W) "
    "frames at rows c*H..(c+1)*H-1): 0.0 is the centre of the first pixel, no half-pixel shift; "
    "CrystFEL adds 0.5 unless run with --no-half-pixel-shift"
)
PEAK_ATTRS = {  # dataset -> HDF5 attributes saying what the numbers are
    "nPeaks": {"units": "count", "description": "valid peaks at the start of this row"},
    "peakXPosRaw": {
        "units": "pixel",
        "axis": "fast scan (column)",
        "convention": PIXEL_INDEX,
        "description": "intensity-weighted centroid (weights max(value, 0))",
    },
    "peakYPosRaw": {
        "units": "pixel",
        "axis": "slow scan (row of the slab)",
        "convention": PIXEL_INDEX,
        "description": "intensity-weighted centroid (weights max(value, 0))",
    },
    "peakTotalIntensity": {
        "units": "ADU",
        "description": "sum of the peak's pixel values, in the detector units of the frames",
    },
    "peakMaxIntensity": {
        "units": "ADU",
        "description": "largest pixel value of the peak, in the detector units of the frames",
    },
    "peakNPixels": {"units": "pixel", "description": "number of pixels in the peak"},
}
RESERVED_LCLS = {"photon_energy_eV", "machineTime", "machineTimeNanoSeconds", "detector_1"}
TIMESTAMP_ENCODING = {"<u8": "(seconds << 32) | nanoseconds", "<f8": "seconds (float64)"}
PROVENANCE = {  # /peaknet dataset -> type label
    "source_id": "str",
    "batch_seq": "<i8",
    "batch_index": "<i4",
    "hit": "|b1",
    "peaks_dropped": "<i4",
}
