"""Encoders and heads; each module registers its models by name."""
