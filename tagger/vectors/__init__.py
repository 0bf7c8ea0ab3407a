"""Embeddings and what is built on them: similar images, near-duplicates and learned tags."""
