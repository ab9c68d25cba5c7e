"""Apache Spark: batch prediction with a run's model package over a table's partitions.

- ``prediction``: the driver's side: reads the table, checks its columns, runs the package
  over its partitions (:func:`predict_on_spark`, what ``mlsmith predict --engine spark`` runs).
- ``locations``: paths and URIs, the input's format, the output checked before the job and
  renamed into place after it.
- ``session``: the Spark session and what is set up around the job.
- ``executor``: what each executor runs, shipped inside the job; it needs the package and the
  package's own requirements, never mlsmith or torch.

pyspark is imported only inside functions (``pip install 'mlsmith[spark]'``).
"""

from mlsmith.spark.prediction import predict_on_spark

__all__ = ["predict_on_spark"]
