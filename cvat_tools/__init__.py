"""cvat-tools: find, outline and name every white blood cell in a blood smear image."""

__version__ = "0.1.0"
