"""Tools around a trained bundle: ``bundle`` (load a bundle's network and weights), ``latent_check``,
``vae`` (sampling and interpolation), ``visualize``, ``sweep`` (Optuna) and ``run`` (an audited
``monai.bundle run``).
"""
