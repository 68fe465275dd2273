"""The inference engine: a scheduler that batches many sequences into each llama.cpp decode step."""
