"""The ``modelyard`` command line. Heavy imports happen inside commands."""
