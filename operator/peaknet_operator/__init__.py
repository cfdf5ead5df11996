"""Kubernetes operator for PeakNetPipeline resources (kopf); built on top of peaknet_pipeline."""
