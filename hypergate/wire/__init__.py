"""Sans-IO codecs: bytes in, events and bytes out. Nothing here imports trio."""
