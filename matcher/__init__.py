"""The matching engine: profile text, encoder, FAISS index, ranking, explanations. Plain Python."""
