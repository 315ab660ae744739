"""Destinations an image can be mirrored to."""
