"""hypergate: peer-to-peer encrypted TCP/UDP tunnel built on trio."""

__version__ = "0.1.0"
