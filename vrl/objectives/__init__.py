"""Training objectives; each module registers its objective by name."""
