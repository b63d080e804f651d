"""Orbits: NERO plots of model scores along rotation, shift, scale and flip orbits (reference §2)."""
