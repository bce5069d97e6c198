"""The xmm-core version, in a leaf module: importing it does not import the ``xmm`` package's facade."""

__version__ = "0.1.0"
