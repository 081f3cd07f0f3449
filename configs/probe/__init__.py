"""Probe job configs, run by `python -m vrl.probe --config=configs/probe/<kind>.py`."""
