"""Hugging Face integration: STEER as a drop-in ``LogitsProcessor`` for ``model.generate``."""
