"""Parity of every qiedge artifact against the PyTorch reference and diffusers."""
