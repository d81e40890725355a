"""The prepare stage: any source (IXI, NIfTI, DICOM studies, the demo cohort) to cached preprocessed
volumes and ``datalist.json``, with the plan that travels with the weights.

``pipeline`` (``python -m mriae.prepare``), ``datalist`` (reading and checking what prepare wrote),
``preprocessing`` (the plan's steps), ``plan``, ``sources``, ``split`` (by subject), ``cohort`` (the
demo cohort from public templates).
"""
