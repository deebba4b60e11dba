"""The size facts every layer shares, each stated once."""

PIXELS_PER_TOKEN = 16  # one latent token covers 16x16 px: the VAE's spatial compression
TOKENS_PER_SLOT = 4  # one encoder image slot covers 2x2 latent tokens
PIXELS_PER_SLOT = 32  # so sizes are multiples of 32 px
MAX_SIDE = 2048  # the largest side the model was trained for
