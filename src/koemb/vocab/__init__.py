"""Vocabulary work: canonical token forms, donor training, the diff, tokenizer expansion, stats."""
