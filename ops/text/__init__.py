"""Text embeddings: a BERT forward pass over safetensors and the bundled MiniLM encoder."""
