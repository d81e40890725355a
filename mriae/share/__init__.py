"""Sharing a trained bundle and running it on clinical data."""
