"""The pure core: model specs, strategy traffic, the per-operator ledger, roofline timing and sweeps.

Imports numpy (and pandas only where a DataFrame is returned); never torch, transformers or plotly.
"""
