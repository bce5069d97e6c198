"""xmm-plugin-audio: the ``<audio>`` modality (non-speech sound) and the audio reading shared with speech."""

from xmm_plugin_audio.io import AudioClip, AudioLoadConfig, AudioLoader, load_audio, resample

__version__ = "0.1.0"
__all__ = ["AudioClip", "AudioLoadConfig", "AudioLoader", "__version__", "load_audio", "resample"]
