"""A tokenizer and a model put to one use: sentence embeddings, the article's example."""
