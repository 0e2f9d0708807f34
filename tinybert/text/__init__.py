"""Text to token ids: BERT's WordPiece tokenizer and the training of its vocabulary."""
