"""HTTP layer: FastAPI app with the OpenAI-compatible API (Ollama's and the UI come later)."""
