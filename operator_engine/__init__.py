"""Operator Engine: the Kubernetes back end of Ocean Protocol's Compute-to-Data."""

__version__ = "0.1.0"
