"""Every limit and default interval in one place, each with the reason for its value.

Sections belong to layers; add a constant to the section of the layer that enforces it.
"""

# --- peer link (crypto/, transport/) ---------------------------------------------------

# Largest encrypted record on a peer link. Records coalesce many mux frames; one AEAD
# call per record is what keeps the per-byte cost low (cipher runs >3 GB/s on big inputs),
# while a bound keeps a hostile peer from making us allocate more than this at once.
MAX_RECORD_SIZE = 1024 * 1024
# A Noise handshake message is at most 65535 bytes by the Noise spec; ours are < 200.
MAX_HANDSHAKE_MESSAGE = 1024
# A peer that has not finished the handshake by then is dropped (slowloris guard).
HANDSHAKE_TIMEOUT_S = 10.0
# Direct-mode dialer: back off between reconnect attempts to a --peer address.
DIAL_RETRY_MIN_S = 0.5
DIAL_RETRY_MAX_S = 30.0
DIAL_TIMEOUT_S = 10.0

# --- mux/ ------------------------------------------------------------------------------

# Largest payload of one data frame. Small enough that control frames and other channels
# interleave within ~20 us of link time, large enough that per-frame Python cost is small.
MAX_FRAME_PAYLOAD = 128 * 1024
# Every channel starts with this receive window (yamux's 256 KiB default).
INITIAL_CHANNEL_WINDOW = 256 * 1024
# Auto-tuning doubles a busy channel's window up to this, so one bulk channel is not
# capped at window/RTT (rust-yamux does the same up to 16 MiB).
MAX_CHANNEL_WINDOW = 16 * 1024 * 1024
# Bytes a peer may have in flight to us across all channels of a session: the most one
# peer can make this process buffer, whatever the number of channels.
SESSION_WINDOW = 64 * 1024 * 1024
# Outgoing bytes queued for the link writer before senders wait (backpressure).
MAX_WRITE_QUEUE = 4 * 1024 * 1024
# Channels one session may hold open; past it, opens are refused with a reason.
MAX_CHANNELS_PER_SESSION = 65536
# Keepalive: ping an idle link this often; a link silent this long is dead.
KEEPALIVE_INTERVAL_S = 15.0
DEAD_PEER_TIMEOUT_S = 45.0
# On shutdown, channels get this long to finish after GO_AWAY before they are reset.
GO_AWAY_GRACE_S = 5.0
# Largest session control message (route table, hello): a route list of thousands of
# services fits easily; anything larger is a protocol error.
MAX_CONTROL_MESSAGE = 4 * 1024 * 1024

# --- roles/ ----------------------------------------------------------------------------

# Providers re-advertise their routes this often; a gateway forgets a route it has not
# heard again within ROUTE_EXPIRY_S (or at once, when the provider's link closes).
ROUTE_REFRESH_S = 20.0
ROUTE_EXPIRY_S = 120.0
# How long the provider may take to connect to the service before the gateway tries the
# next provider; the whole open gives up after OPEN_TOTAL_TIMEOUT_S.
OPEN_TIMEOUT_S = 15.0
OPEN_TOTAL_TIMEOUT_S = 60.0
SERVICE_CONNECT_TIMEOUT_S = 10.0
# Bytes read from a local socket at once: one data frame's worth.
SOCKET_READ_SIZE = MAX_FRAME_PAYLOAD
# UDP: a flow with no datagram in either direction for this long is closed.
UDP_IDLE_TIMEOUT_S = 300.0
# UDP flows one gate keeps at once; the oldest idle flow is closed past it.
MAX_UDP_FLOWS_PER_GATE = 4096
# Largest UDP payload over IPv4/IPv6 without jumbograms.
MAX_DATAGRAM = 65535
# Fetching a services or policy file from a URL.
URL_FETCH_TIMEOUT_S = 10.0
MAX_URL_DOCUMENT = 8 * 1024 * 1024
