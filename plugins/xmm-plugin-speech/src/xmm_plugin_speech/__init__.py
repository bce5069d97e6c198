"""xmm-plugin-speech: the ``<speech>`` modality (Whisper-base offline, any transformers speech encoder, CIF/C-Former)."""

__version__ = "0.1.0"
