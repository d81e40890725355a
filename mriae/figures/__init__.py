"""Figures and small reports every stage draws: ``plots`` (curves, cases, summary tables), ``depth``
(3D mid-planes through training), ``gan`` (sample grids, GAN curves).
"""
