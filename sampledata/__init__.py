"""The sample archive: a synthetic year of Sentinel-2 L2A scenes and the truth it was drawn from.

A fixture and a test oracle for the tests, the demo and the benchmarks, not part of the method:
nothing under ``core/`` imports it, and it is not shipped in the plugin zip.
"""
