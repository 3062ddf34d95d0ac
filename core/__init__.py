"""Numerical and I/O core of Cloud Probability.

Nothing in this package imports ``qgis`` or PyQt: every stage can run from plain Python,
outside QGIS, and on a Dask cluster. Progress and cancellation go through the small
protocol in :mod:`core.progress`.
"""
