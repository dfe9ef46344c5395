"""callscreen: call screening for Asterisk and FreePBX."""

__version__ = "0.1.0"
