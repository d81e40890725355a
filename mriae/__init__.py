"""mriae: the shared library behind the MRI autoencoder / GAN MONAI bundles.

Modules: ``io`` (NIfTI, MGZ, DICOM readers), ``cohort`` (demo cohort from public templates),
``preprocessing`` and ``split`` (the prepare step), ``corruption`` (batched input corruption),
``networks`` (one file per architecture family), ``losses``, ``engine`` (Ignite pieces),
``evaluation``, ``inference``, ``tracking`` (MLflow).
"""

__version__ = "0.1.0"
