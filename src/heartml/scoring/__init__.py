"""Cohort scoring: a whole population from files, at the speed of the model's ONNX engine.

- :mod:`~heartml.scoring.columns`: one Arrow batch → the rows the model scores and the refusals
  (pure; the API's own request model words every refusal);
- :mod:`~heartml.scoring.output`: the scored batch's columns (pure);
- :mod:`~heartml.scoring.model`: which registered version scores, and its files;
- :mod:`~heartml.scoring.local`: the files read, scored and written on one machine;
- :mod:`~heartml.scoring.spark`: the same batch functions in Spark's Python workers
  (``mapInArrow``), for a cohort past one machine.
"""
