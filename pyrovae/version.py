"""pyrovae's version, stated once (setuptools reads it for the wheel; ``pyrovae --version`` prints it)."""

__version__ = "0.1.0"
