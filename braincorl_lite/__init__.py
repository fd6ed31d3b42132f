"""BraInCoRL-lite: in-context meta-learned encoding models of higher visual cortex."""

__version__ = "0.1.0"
