"""The ``xmm`` command line."""
