"""The compare stage: ``run`` (every model and baseline on the same corrupted test slices),
``cli`` (``scripts/compare.py``), ``report``, ``stats`` (bootstrap intervals, paired tests),
``baselines`` (identity, Gaussian, NLM, BM4D) and ``real_scan`` (the real-scan benchmark).
"""
