"""The PyTorch reference: every Qwen-Image-2 component, state-dict compatible with diffusers and
transformers. Import submodules directly; this package imports nothing heavy on its own."""
