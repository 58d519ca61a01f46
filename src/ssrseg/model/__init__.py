"""The trainable side of SSR: the WeCLIP-style decoder, its losses and :class:`SSRModel`."""

from ssrseg.model.decoder import SegDecoder, decoder_layers
from ssrseg.model.ssr import SSRModel

__all__ = ["SSRModel", "SegDecoder", "decoder_layers"]
