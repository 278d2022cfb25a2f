"""Corpora: the synthetic generator, the tokenizer trainer, and any corpus packed into windows."""
