"""batchrec: batch scoring and embedding export for sequential recommenders."""

__version__ = "0.1.0"
