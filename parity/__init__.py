"""Parity of exported artifacts against the reference: the checks behind `qiedge parity`, the
export-time figures in manifests, and the parity tests."""
