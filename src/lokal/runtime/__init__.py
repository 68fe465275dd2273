"""Which models are loaded: lazy loading from the store, one engine per model."""
