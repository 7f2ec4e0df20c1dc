"""One exception family. User-facing errors print as one line, without a traceback."""


class HypergateError(Exception):
    """Base of every error hypergate raises on purpose."""


class ConfigError(HypergateError):
    """Bad user input: a flag, a variable, a service or policy file. Names source, field, value."""


class ProtocolError(HypergateError):
    """A peer broke the wire protocol. Closes that peer (or channel), never the process."""


class HandshakeError(ProtocolError):
    """The peer could not prove it holds the router secret, or the handshake was malformed."""


class ChannelError(HypergateError):
    """A channel was reset or refused; carries the reason the other side gave."""
