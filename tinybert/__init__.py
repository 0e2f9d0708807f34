"""tinybert: a BERT you can read, in plain NumPy."""
