"""Probes: measure an encoder (frozen features, its own classifier, fine-tuned), as a job on a
checkpoint (`python -m vrl.probe`) or as a training run's `config.evals` (`vrl.evaluators`)."""
