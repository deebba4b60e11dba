"""Runs exported Qwen-Image-2 graphs. Imports no torch unless the torch backend is chosen."""
