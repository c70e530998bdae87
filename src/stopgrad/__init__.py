"""stopgrad: self-supervised visual representation learning with guided stop-gradient."""
__version__ = "0.1.0"
