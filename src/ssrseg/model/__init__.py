"""The trainable side of SSR: the WeCLIP-style decoder, its losses and :class:`SSRModel`."""

from ssrseg.model.decoder import SegDecoder, decoder_layers
from ssrseg.model.ssr import SSRModel, build_ssr_model

__all__ = ["SSRModel", "SegDecoder", "build_ssr_model", "decoder_layers"]
