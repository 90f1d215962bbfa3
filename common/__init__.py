"""The base of the package, below both `hardware_profiles` and `simulator`: the one exception type for bad input
(`errors`) and the units and number formats (`units`). Imports nothing else of sparq_sim."""
