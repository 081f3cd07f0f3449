"""Probing jobs that measure a frozen or fine-tuned encoder from a checkpoint."""
