"""Studies built on the export: procedures that run the pipeline's export several times and
measure what it ships (`sweep`: one export per budget, benchmarked and attacked together).

They sit above `pipeline` and `harness` and import both; nothing below imports them.
"""

from gdws_export.studies.sweep import sweep

__all__ = ["sweep"]
