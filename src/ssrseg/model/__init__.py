"""The trainable side of SSR: the WeCLIP-style decoder, its losses and :class:`SSRModel`."""

from ssrseg.model.decoder import SegDecoder, decoder_layers

__all__ = ["SegDecoder", "decoder_layers"]
