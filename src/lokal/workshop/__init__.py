"""The model workshop: make new models from stored ones (quantize, import, adapters) and measure
them (perplexity, the quantization table). Built on the store, the engine and the runtime; used by
the CLI and the server."""
