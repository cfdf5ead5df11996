"""Writer stage: peak finding on segmentation masks and CXI files that CrystFEL indexes.

- `peaks`: `find_peaks` (one event -> PeakList), pure numpy/scipy.
- `cxi`: `CxiFile` (one file, written as .part and renamed when complete).
- `series`: `CxiSeries` (a writer's rotating files; closing one commits its Results).
- `ledger`: what each closed file commits, read back to skip duplicates and to count.
- `geometry`: `crystfel_geometry` (the CrystFEL geometry file for those files), pure text.
- `stage`: `WriterStage` (Results -> rows, every event counted), what each actor runs.
- `actor`: `start_writer_actors` (Ray actors pulling from Q2).
- `summary`: `merge_summaries`, `files_on_disk`, `write_run_summary` (summary.json).

Heavy modules (ray, h5py, scipy) are imported where used, so importing this package is cheap.
"""

from .actor import WriterActor, start_writer_actors
from .cxi import Rows, compression_options, photon_energy_ev
from .geometry import crystfel_geometry, panel_layout
from .peaks import PeakList, find_peaks, masks_from_output
from .series import CxiSeries
from .stage import WriterStage
from .summary import files_on_disk, merge_summaries, write_run_summary

__all__ = [
    "CxiSeries",
    "PeakList",
    "Rows",
    "WriterActor",
    "WriterStage",
    "compression_options",
    "crystfel_geometry",
    "files_on_disk",
    "find_peaks",
    "masks_from_output",
    "merge_summaries",
    "panel_layout",
    "photon_energy_ev",
    "start_writer_actors",
    "write_run_summary",
]
