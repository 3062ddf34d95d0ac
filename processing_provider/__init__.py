"""QGIS Processing provider ``cloudprob``: thin adapters from Processing parameters to ``core``."""
