"""The evaluate stage: ``metrics`` (reconstruction metrics of a bundle's test run) and
``gan_quality`` (diversity and fidelity of generated samples).
"""
