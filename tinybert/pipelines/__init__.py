"""A tokenizer and a model put to one use.

    sentence.py         SentenceEncoder: mean-pooled, L2-normalised sentence embeddings (embed, similarity)
    predict.py          classify (predict) and fill_mask (fill-mask)
    article_example.py  the article's code example, done right (lesson 09)
"""
