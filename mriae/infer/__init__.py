"""The infer stage: ``pipeline`` (a bundle's inference on a user's volumes, on their own grid),
``transforms`` (loading, scaling, inversion) and ``adapt`` (self-supervised adaptation to one scan).
"""
