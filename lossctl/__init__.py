"""lossctl: image losses and quality metrics, as a library and a command-line evaluator."""

__version__ = "0.1.0"
