"""{{ cookiecutter.description }}: an xmm modality plugin (`{{ cookiecutter.placeholder }}`)."""

from {{ cookiecutter.__package_name }}.encoder import {{ cookiecutter.__class_name }}Encoder
from {{ cookiecutter.__package_name }}.modality import ENCODER_NAME, MODALITY, load_{{ cookiecutter.modality }}

__version__ = "0.1.0"

__all__ = [
    "ENCODER_NAME",
    "MODALITY",
    "{{ cookiecutter.__class_name }}Encoder",
    "__version__",
    "load_{{ cookiecutter.modality }}",
]
