"""The train stage: ``engine`` (Ignite pieces: corrupted batches, evaluator, best checkpoint,
history), ``losses``, ``adversarial`` (the GAN trainers), ``tracking`` (MLflow), ``resume``.
"""
