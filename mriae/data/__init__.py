"""The data stage: prepared volumes as training and evaluation samples on one data path.

``slices`` (slice dataset, device-resident batch loader), ``stacks`` (neighbouring-slice stacks),
``volumes`` (whole volumes for the 3D bundles), ``gan`` (real samples for the GANs), ``corruption``
(batched, seeded input corruption).
"""
