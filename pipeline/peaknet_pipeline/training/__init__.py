"""Training PeakNet on the random source's frames (`peaknet-pipeline train`), and measuring a
model against the injected peaks in-process. Importing this package imports torch."""
