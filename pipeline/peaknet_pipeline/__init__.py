"""PeakNet Pipeline: streaming Bragg-peak segmentation on Ray.

The top package stays light: torch and ray are imported by the stages that need them,
so ``import peaknet_pipeline`` and the config CLI start fast.
"""

__version__ = "0.1.0"
