"""Writer stage: peak finding on segmentation masks and CXI files that CrystFEL indexes.

- `peaks`: `find_peaks` (one event -> PeakList), pure numpy/scipy.
- `cxi`: `CxiFile` (one file, written as .part and renamed when complete).
- `series`: `CxiSeries` (a writer's rotating files; closing one commits its Results).
- `ledger`: what each closed file commits, read back to skip duplicates and to count.
- `geometry`: `crystfel_geometry` (the CrystFEL geometry file for those files), pure text.
- `stage`: `WriterStage` (Results -> rows, every event counted), what each actor runs.
- `actor`: `start_writer_actors` (Ray actors pulling from Q2).
- `summary`: `merge_summaries`, `files_on_disk`, `write_run_summary` (summary.json), and per
  DAQ-run folder `merge_daq_run`, `write_daq_run_summary`.
- `daqrun`: `DaqRuns` (runtime.service: one folder, file series and summary part per DAQ run,
  closed once quiet), `daq_run_label`.

Importing this package loads none of its modules: each name below is imported on first use
(PEP 562), so `writer.peaks` imports on a machine without Ray, h5py or pydantic
(bench/gpu_check.py checks the device-side peak finder against it on a bare GPU machine).
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {
    "WriterActor": ".actor",
    "start_writer_actors": ".actor",
    "Rows": ".cxi",
    "compression_options": ".cxi",
    "photon_energy_ev": ".cxi",
    "crystfel_geometry": ".geometry",
    "panel_layout": ".geometry",
    "PeakList": ".peaks",
    "find_peaks": ".peaks",
    "masks_from_output": ".peaks",
    "CxiSeries": ".series",
    "DaqRuns": ".daqrun",
    "daq_run_label": ".daqrun",
    "merge_daq_run": ".summary",
    "write_daq_run_summary": ".summary",
    "WriterStage": ".stage",
    "files_on_disk": ".summary",
    "merge_summaries": ".summary",
    "write_run_summary": ".summary",
}

__all__ = [
    "CxiSeries",
    "DaqRuns",
    "PeakList",
    "Rows",
    "WriterActor",
    "WriterStage",
    "compression_options",
    "crystfel_geometry",
    "daq_run_label",
    "files_on_disk",
    "find_peaks",
    "masks_from_output",
    "merge_daq_run",
    "merge_summaries",
    "panel_layout",
    "photon_energy_ev",
    "start_writer_actors",
    "write_daq_run_summary",
    "write_run_summary",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
