"""Tagging on a Dask cluster: the only package that imports dask (the cluster extra).

protocol: what travels; worker: the Dask side; coordinator: the window of batches out;
backend: the scan backend that sends a scan's batches through it.
"""
