"""The domain: typed schemas and persistence. Knows nothing of HTTP or FAISS."""
