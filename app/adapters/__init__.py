"""Trainer adapters over the Python client: TRL reward functions and a verl compute_score module."""
