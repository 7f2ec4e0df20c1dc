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

# Largest payload of one data frame (and one socket read, SOCKET_READ_SIZE). What a bulk
# transfer pays per frame (a read, a wakeup, a seal, a write, trio's bookkeeping) is
# about a third of the tunnel's CPU once the cipher is AES-GCM, so larger frames pay:
# 256 KiB against 128 KiB, same-run A/B (`bench/throughput.py`, alternating, 5 s each):
# one stream 4.0-4.2 -> 4.4-4.5 Gbit/s up (3 of 3), 3.8-4.4 -> 4.5-5.2 down (4 of 4);
# 8 streams within the noise. Fairness: another channel's frame waits behind at most
# one bulk frame per busy channel, ~0.5 ms at these rates.
MAX_FRAME_PAYLOAD = 256 * 1024
# Unsent bytes a peer link's TCP socket may hold before it stops taking writes
# (TCP_NOTSENT_LOWAT). trio sets 16 KiB on every SocketStream: whenever the peer lagged,
# each record then went out in several partial writes with a writer wakeup each, and 8
# parallel streams ran ~35% slower. One record's worth lets a record go in one write;
# another channel's frame waits behind at most that much more.
LINK_NOTSENT_LOWAT = MAX_FRAME_PAYLOAD
# The same for the client's and the service's sockets: a frame from the peer then goes
# in one write from the session's reader more often, instead of the rest going through
# a drain task in pieces. One stream +6 to +25% in 6 of 8 same-run A/B rounds, 8 streams
# within the noise. Each such socket carries one connection, so this delays nothing else.
LOCAL_NOTSENT_LOWAT = MAX_FRAME_PAYLOAD
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
# A link replaced by a duplicate (two paths to one provider came up at once) keeps its
# routes this long, so its gates stay open until the newer link's routes arrive (the
# provider sends them first thing, well within this) instead of closing and reopening.
REPLACED_LINK_ROUTES_GRACE_S = 5.0
# A client whose gate has routes but no usable link (one being replaced or redialled)
# waits this long for a route change before it is turned away.
OPEN_WAIT_FOR_LINK_S = 10.0
# How long the provider may take to connect to the service before the gateway tries the
# next provider; the whole open gives up after OPEN_TOTAL_TIMEOUT_S.
OPEN_TIMEOUT_S = 15.0
OPEN_TOTAL_TIMEOUT_S = 60.0
# The client's first bytes, read while the OPEN is in flight, travel right behind it
# instead of after the ACCEPT (one round trip less per connection). Kept until the
# provider accepts, to resend to the next one if it refuses; far below the channel's
# initial window (INITIAL_CHANNEL_WINDOW), so sending them never waits for credit.
EARLY_DATA_MAX = 16 * 1024
SERVICE_CONNECT_TIMEOUT_S = 10.0
# Connections a gate accepts per wakeup before letting the accepted ones run.
ACCEPT_BATCH = 64
# Bytes read from a local socket at once: one data frame's worth.
SOCKET_READ_SIZE = MAX_FRAME_PAYLOAD
# A socket is read straight into the link's record buffer (no bytes object per read, no
# copy) only while both windows have at least this much room; less, and the ordinary
# path queues what was read and waits for credit.
DIRECT_SEND_MIN = 16 * 1024
# UDP: a flow with no datagram in either direction for this long is closed.
UDP_IDLE_TIMEOUT_S = 300.0
# UDP flows one gate keeps at once; past it, datagrams of new client addresses are dropped
# (and counted) until flows expire, so a flood of source addresses cannot exhaust memory.
MAX_UDP_FLOWS_PER_GATE = 4096
# Largest UDP payload over IPv4/IPv6 without jumbograms.
MAX_DATAGRAM = 65535
# A gate whose port cannot be bound (in use, no permission, an address not up yet, as a
# Podman bridge before its first container) is retried with backoff up to this.
GATE_RETRY_MIN_S = 1.0
GATE_RETRY_MAX_S = 30.0
# Datagrams of a new UDP flow kept while its channel opens; more are dropped.
UDP_PENDING_DATAGRAMS = 64
# Datagrams read from a UDP gate or service socket per wakeup, sent to the peer as one
# record (the session is corked meanwhile): under load, per-datagram costs (a wakeup,
# a record, a send) are shared by the batch. Bounded so one busy socket cannot starve
# the loop.
UDP_RECV_BATCH = 64
# Fetching a services or policy file from a URL.
URL_FETCH_TIMEOUT_S = 10.0
MAX_URL_DOCUMENT = 8 * 1024 * 1024

# --- transport/rendezvous.py: peers met on the DHT -------------------------------------

# Relayed handshakes waiting for their next message, and finished ones waiting for the
# client's TCP connection: bounded, and forgotten after this long.
RENDEZVOUS_PENDING_TTL_S = 30.0
RENDEZVOUS_MAX_PENDING = 256
# Lookups of the router topic: quickly at first (peers start together), then calmly.
RENDEZVOUS_LOOKUP_INTERVALS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# Announcement of the topic record: refreshed well inside the DHT's 20-minute expiry.
RENDEZVOUS_TOPIC_REANNOUNCE_S = 300.0
RENDEZVOUS_RELAYED_STEP_TIMEOUT_S = 10.0
RENDEZVOUS_CONNECT_TIMEOUT_S = 5.0
RENDEZVOUS_CONNECT_STAGGER_S = 0.25
# A punch that has not connected by then will not: the SYNs were dropped for good.
RENDEZVOUS_PUNCH_TIMEOUT_S = 8.0
# Direct and punched paths get this head start before the relay is tried as well: they
# connect within a round trip or two when they can at all, and cost the relay nothing.
RENDEZVOUS_RELAY_HEAD_START_S = 2.0
# A peer we failed to reach is left alone this long before the next try.
RENDEZVOUS_DIAL_BACKOFF_S = 30.0
# Both peers dial each other; the router keeps the link dialed by the smaller key and
# closes the other, resetting channels already on it. The larger key lets the peer's dial
# land first for this long (a relayed handshake and a punch, ~1 s with a multi-port
# punch in the lab) and dials only if still unconnected.
RENDEZVOUS_DIAL_YIELD_S = 3.0

# --- policy/ and http/ (ingress policy, shaping, /unlimited, fingerprint resolver) ------

# URL policy sources are re-read this often; a failed read keeps the last good policy.
POLICY_REFRESH_S = 60.0
# Shaping: a pump reads at most this much before asking the bucket, so one read never
# needs more waiting than one frame's worth (or the burst, whichever is smaller).
SHAPER_MAX_CHUNK = MAX_FRAME_PAYLOAD
# /unlimited: a token's timestamp may be this far from our clock (either way), the
# original's 5 minutes; a used token is remembered this long after its timestamp, which
# covers every moment it could still be accepted.
UNLIMITED_TOKEN_WINDOW_MS = 5 * 60 * 1000
# A successful /unlimited call lifts limits for this IP for 30 minutes (the original's).
UNLIMITED_GRANT_MS = 30 * 60 * 1000
# Used tokens remembered at once. Only holders of the secret can add entries, and each
# lives at most 10 minutes; when full, new tokens are refused (never forget a live one).
MAX_UNLIMITED_REPLAY_CACHE = 65536
# IPs holding an unlimited grant at once (same reasoning: secret holders only).
MAX_UNLIMITED_GRANTS = 65536
# Longest token accepted: the payload is ~60 bytes of JSON; 4 KiB leaves ample room.
MAX_UNLIMITED_TOKEN = 4096
# PBKDF2 iterations of the README's `openssl enc -pbkdf2 -iter 10000` recipe.
UNLIMITED_PBKDF2_ITERATIONS = 10000
# Tokens decrypted at once (in threads): one core's worth of PBKDF2 at most, so a flood
# of requests cannot take the machine from the tunnel.
UNLIMITED_DECRYPT_THREADS = 1
# Tiny HTTP server: request line + headers, and body; anything larger gets 413/431.
HTTP_MAX_HEADER_BYTES = 16 * 1024
HTTP_MAX_BODY_BYTES = 16 * 1024
# A connection has this long to send its request and receive the answer (slowloris guard).
HTTP_CONNECTION_TIMEOUT_S = 10.0
# Connections served at once per HTTP endpoint; more wait in the kernel's accept queue.
HTTP_MAX_CONNECTIONS = 64
# After a failed accept (e.g. out of file descriptors), pause this long before retrying.
HTTP_ACCEPT_RETRY_S = 0.1
# Fingerprint resolver: entries live while their channel is open; `expiresAt` in an
# answer tells the caller how long it may cache it (the original's 2-minute minimum).
FINGERPRINT_CACHE_HINT_MS = 120 * 1000
# Entries one provider keeps at once (one per open channel; channels are bounded too).
MAX_FINGERPRINT_ENTRIES = 262144

# --- docker/ ---------------------------------------------------------------------------

# One Engine API call (ping, list, inspect, create): a local daemon answers in
# milliseconds; a daemon that takes longer is stuck or restarting, and the refresh loop
# retries rather than waiting on it forever.
DOCKER_REQUEST_TIMEOUT_S = 30.0
# Stopping a container waits for its stop timeout on the daemon side first.
DOCKER_STOP_TIMEOUT_S = 5
# Largest Engine API response body we read: a container list of thousands of entries is a
# few MiB; anything larger is not an answer we can use.
MAX_DOCKER_RESPONSE = 32 * 1024 * 1024
# The original's --refreshTime default (20 s): how often the containers are listed again.
DOCKER_REFRESH_S = 20.0
# After a failed refresh (daemon down or restarting), retry sooner than a full refresh
# but back off so a daemon that stays down costs one log line per interval, not a flood.
DOCKER_RETRY_MIN_S = 1.0
DOCKER_RETRY_MAX_S = 30.0
# Helper containers forward one connection per client; the forwarder gives up dialing
# the gateway's listener after this long so a dead gateway does not pile up sockets.
DOCKER_FORWARD_CONNECT_TIMEOUT_S = 10.0
# A forwarded UDP flow with no datagram in either direction for this long is closed.
DOCKER_FORWARD_UDP_IDLE_S = 300.0
# UDP flows one forwarded port keeps at once; the oldest is closed past it.
DOCKER_FORWARD_MAX_UDP_FLOWS = 1024

# --- dht/ ------------------------------------------------------------------------------
# Values marked (Node) copy dht-rpc 6.27 / hyperdht 6.34 so we behave like the nodes we
# interoperate with; the rest bound what Node leaves unbounded.

# Node nodes read into a 2048-byte buffer and drop longer datagrams (measured); we drop
# them too, so nothing we accept could not have come through the real network.
DHT_MAX_DATAGRAM = 2048
# (Node) one send waits 1 s for an answer; 3 resends, so a dead node costs ~4 s.
DHT_REQUEST_TIMEOUT_S = 1.0
DHT_REQUEST_RETRIES = 3
# Requests this node may have in flight at once; Node's congestion window allows ~160
# per 3 s, so this is never reached by honest use and stops runaway queries.
DHT_MAX_INFLIGHT_REQUESTS = 1024
# An iterative query gives up after this long and keeps what it has.
DHT_QUERY_TIMEOUT_S = 30.0
# Nodes one query may visit; a healthy public-DHT lookup visits well under 100, and the
# bound stops replies that invent closer nodes from walking us forever.
DHT_MAX_VISITS_PER_QUERY = 256
# (Node) table maintenance tick; refresh after ~5 min idle; at most 3 re-pings for full rows.
DHT_TICK_S = 5.0
DHT_REFRESH_TICKS = 60
DHT_REPING_CONCURRENCY = 3
# (Node) at most 10 DOWN_HINT checks at once.
DHT_DOWN_HINT_CHECKS = 10
# (Node) DELAYED_PING waits at most 10 s; we also bound how many wait at once.
DHT_MAX_PING_DELAY_S = 10.0
DHT_MAX_DELAYED_PINGS = 64
# Requests being answered at once; past it new requests are dropped (counted).
DHT_MAX_SERVING = 512
# hyperdht's announce() commits to every one of the k closest replies.
DHT_ANNOUNCE_COMMIT_NODES = 20
# Inbound datagrams per source IP: a busy public node sees a few per second from one
# peer (queries, pings, relays); 100/s with a burst of 200 never touches honest peers
# and caps what one host can make us spend. Sources remembered at once is bounded.
DHT_RATE_PER_SOURCE = 100.0
DHT_RATE_BURST = 200.0
DHT_RATE_SOURCES = 8192
# Announce records: hyperdht keeps them ~20 min and holds 65536; we also cap per topic
# (it serves 20 at a time) and per announcing IP, so one source cannot fill the store.
DHT_RECORD_TTL_S = 20 * 60
DHT_MAX_RECORDS = 65536
DHT_MAX_RECORDS_PER_TOPIC = 256
DHT_MAX_RECORDS_PER_IP = 128
DHT_MAX_ROUTER_ENTRIES = 65536
# (Node) a server announces its key to the 3 closest nodes, pings them every 3 s to keep
# the NAT mapping they relay through open, and re-announces after 100 rounds (~5 min),
# well inside the 20 min records live, or at once when fewer than 3 relays answer.
DHT_RELAY_ANNOUNCE_NODES = 3
DHT_RELAY_KEEPALIVE_S = 3.0
DHT_RELAY_KEEPALIVE_ROUNDS = 100
# On stop, the unannounce (a query plus one request per relay) gets this long.
DHT_UNANNOUNCE_ON_STOP_TIMEOUT_S = 5.0
# (Node) the reachability check asks up to 5 nodes to answer to our server socket.
DHT_FIREWALL_PROBES = 5
# (Node) an adaptive node turns persistent after 240 ticks (~20 min) without trouble.
DHT_STABLE_TICKS = 240
# (Node) DOWN_HINTs a node sends per 5 s tick, whatever its queries run into.
DHT_DOWN_HINTS_PER_TICK = 50
# (Node) outbound pacing: 80 requests per 750 ms bucket, 160 over the last four.
DHT_CONGESTION_WINDOW = 80
DHT_CONGESTION_ROTATE_S = 0.75

# --- relay (transport/relay.py) --------------------------------------------------------

# Pairs one relay serves at once (waiting or spliced). Each pair holds at most ~6 messages
# of RELAY_CHUNK in flight (queue, message being read, message being sent, per direction),
# so 256 pairs stay under ~200 MiB even when every reader stalls.
MAX_RELAY_PAIRS = 256
# Connections past 2 per pair allowed while their hello is pending (bounded in time too).
RELAY_HELLO_SLACK = 64
# Peers of one router waiting at once: a router has a handful of peers connecting at a
# time; the bound stops one capability from taking every slot.
MAX_RELAY_WAITING_PER_CAPABILITY = 32
# Bytes per relay message from our clients, and the largest message the relay accepts
# (bigger closes that connection with 1009). One mux data frame fits one message.
RELAY_CHUNK = 128 * 1024
MAX_RELAY_MESSAGE = RELAY_CHUNK
# Largest hello / control message: the JSON hello is ~140 bytes.
MAX_RELAY_HELLO = 512
# A "join" is sent when the peer has (or is about to) put its "wait" there, so 10 s is
# ample; a "wait" is put first and may wait for a slower peer's DHT round trips.
RELAY_JOIN_TIMEOUT_S = 10.0
RELAY_WAIT_TIMEOUT_S = 60.0
# A connection must send its hello this soon after the upgrade (slowloris guard); the
# TCP + TLS + upgrade steps get RELAY_CONNECT_TIMEOUT_S.
RELAY_HELLO_TIMEOUT_S = 10.0
RELAY_CONNECT_TIMEOUT_S = 10.0
# A pair with no message either way for this long is closed: a live mux link pings every
# KEEPALIVE_INTERVAL_S, so only dead links stay silent this long.
RELAY_IDLE_TIMEOUT_S = 120.0
# Waiting for the other end's close frame before dropping the socket.
RELAY_CLOSE_TIMEOUT_S = 2.0
# Relays offered by peers in their hellos that we keep: a router has few public peers,
# and each URL is only a place to wait; a bound stops a peer from flooding the list.
MAX_OFFERED_RELAYS = 8
# Longest relay URL accepted from a peer's hello (a host, a port and a short path).
MAX_RELAY_URL_LENGTH = 512

# --- UDX (udx/): reliable streams over UDP, wire-compatible with Node udx-native ------

# Payload bytes per UDX packet: Node's no-probe IPv4 size (1200-byte MTU base minus 48),
# which every path that carries 1200-byte datagrams takes without fragmenting.
UDX_MAX_PAYLOAD = 1152
# Receive buffer per recvfrom: Node reads into 2048 bytes, and probes pad up to 1500.
UDX_RECV_BUFFER = 2048
# SO_RCVBUF / SO_SNDBUF asked for (the kernel caps it at net.core.rmem_max / wmem_max):
# a window of bulk packets arrives in bursts faster than one Python reader drains them.
UDX_SOCKET_BUFFER = 4 * 1024 * 1024
# Equal-sized datagrams handed to the kernel in one sendmsg with UDP GSO: the kernel's
# limit is 64 segments and 64 KiB in all, so 55 packets of 1172 bytes at most.
UDX_GSO_SEGMENTS = 55
# Datagrams read per wakeup before yielding, so one busy socket cannot starve the loop.
UDX_RECV_BATCH = 256
# Bytes the application may queue ahead of the peer's acks before send_all waits.
UDX_SEND_BUFFER = 4 * 1024 * 1024
# Bytes we buffer for the reader (unread + out of order); what rwnd advertises. Node
# advertises 4 MiB and so do we: enough for ~1 Gbit/s at 30 ms RTT.
UDX_RECEIVE_BUFFER = 4 * 1024 * 1024
# A window update is sent when reading opened the window by this much since the last
# advertisement (a quarter of the buffer), not for every small read.
UDX_WINDOW_UPDATE_STEP = UDX_RECEIVE_BUFFER // 4
# RFC 6298 RTO before any sample, and its clamp. 200 ms minimum (Linux's) because our
# peers ACK at once; 30 s maximum as Node.
UDX_INITIAL_RTO_S = 1.0
UDX_MIN_RTO_S = 0.2
UDX_MAX_RTO_S = 30.0
# Exponential backoff stops growing here, so a vanished peer is noticed in ~10-15 s
# (Node gives up after ~13 s) rather than minutes.
UDX_RTO_BACKOFF_CAP_S = 2.0
# Consecutive RTO expiries without progress before the stream fails (ETIMEDOUT).
UDX_MAX_RTO_EXPIRIES = 8
# Within one receive batch, an ACK goes out after this many DATA packets (and one at the
# batch's end). Node ACKs every DATA; one ACK per batch would make a single lost ACK
# stall a whole flight until the RTO. 4 costs the sender a quarter of Node's ACK load.
UDX_ACK_EVERY = 4
# Congestion window bounds in packets: RFC 6928's initial 10. The maximum (2.4 MB of
# payload: 1 Gbit/s at 19 ms RTT, beyond what one Python endpoint moves) stops bursts
# from overflowing a loopback receiver's socket buffer, which at 4096 lost hundreds of
# packets in some runs.
UDX_INITIAL_CWND = 10
UDX_MAX_CWND = 2048
# Tail loss probe after 2 x SRTT without progress, but never sooner than this (loopback
# SRTTs of microseconds would otherwise probe on every scheduling hiccup).
UDX_MIN_TLP_S = 0.01
# Duplicate acks / packets SACKed above a hole before that hole counts as lost (RFC 6675).
UDX_DUP_THRESHOLD = 3
# RACK reorder window floor: a packet sent this long before one already delivered is
# lost (the window is min_rtt/4 above this); 1 ms absorbs a burst's own jitter.
UDX_MIN_REORDER_WINDOW_S = 0.001
# SACK blocks per ACK: Node's limit (50 blocks, 400 bytes of extension).
UDX_MAX_SACK_BLOCKS = 50
# Out-of-order packets held at most this far ahead of the next expected seq.
UDX_MAX_REORDER_SPAN = 65536
# After both ENDs, keep answering duplicate ENDs this long (Node has no TIME_WAIT and
# would otherwise retransmit its END until ETIMEDOUT).
UDX_TIME_WAIT_S = 10.0
# aclose waits this long for the peer to ack our END before returning.
UDX_CLOSE_TIMEOUT_S = 2.0
# A closed (detached) stream keeps retransmitting/acking at most this long.
UDX_DETACHED_LINGER_S = 30.0
# Unreliable MESSAGE datagrams queued for receive_message before new ones are dropped.
UDX_MESSAGE_QUEUE = 256

# --- UDP hole punching (transport/udp_punch.py, transport/punch_plan.py) ----------------

# A punch socket is classified from how this many DHT nodes see it (hyperdht asks 4; 3
# answers are the least a CONSISTENT/RANDOM verdict needs).
UDP_PUNCH_CLASSIFY_NODES = 4
# The client classifies while its OPEN/REPLY exchange runs; PINGs answer within a round
# trip, so 2 s covers slow paths without holding the dial up for long.
UDP_PUNCH_CLASSIFY_TIMEOUT_S = 2.0
# The server classifies inside its FINISH handler: it must answer before the client's DHT
# request is resent (DHT_REQUEST_TIMEOUT_S), or READY goes out without UDP punch info.
UDP_PUNCH_SERVER_CLASSIFY_TIMEOUT_S = 0.8
# consistent/open punch: a probe to every address of the other side this often (hyperdht
# sends rounds 1 s apart; NAT mappings open within a round trip, so 50 ms loses little).
UDP_PUNCH_PROBE_INTERVAL_S = 0.05
# A consistent punch that has not met the other side by then will not (mappings exist
# after the first round trip; this covers slow relays delivering READY late).
UDP_PUNCH_TIMEOUT_S = 8.0
# consistent/random: probes to random ports of the random side's host, one every 2 ms
# (hyperdht: 20 ms, 1750 probes, for home routers on the internet; the lab takes more).
# 2500 probes against 256 mappings miss with probability (1-256/64512)^2500 ~ 5e-5, and
# leave at most 2500 short-lived conntrack entries in our own NAT.
UDP_PUNCH_SPRAY_INTERVAL_S = 0.002
UDP_PUNCH_SPRAY_PROBES = 2500
UDP_PUNCH_SPRAY_PORTS = (1024, 65535)
# The server sprays this long after sending READY: the client opens its birthday sockets
# only once READY has reached it through the relay.
UDP_PUNCH_SPRAY_DELAY_S = 0.3
# random/consistent ("birthday"): sockets the random side opens, each probing the other
# side's address (hyperdht: 256); re-probed this often to keep the mappings alive.
UDP_PUNCH_BIRTHDAY_SOCKETS = 256
UDP_PUNCH_BIRTHDAY_ROUND_S = 1.0
# Multi-port punches end after the spray's own duration (~5 s) plus a margin for the answer;
# the relay waits for them, so this bounds what a failed one costs the link.
UDP_PUNCH_RANDOM_TIMEOUT_S = 7.0
# After the punch, probes are answered (the other side may still be punching) at most
# this many at a time; more are dropped.
UDP_PUNCH_ANSWER_QUEUE = 16

# --- Hyperswarm client (hypergate/hyperswarm: hyperdht connect to Node peers) ---------------
# Plaintext per secret-stream frame we send: a receiver decrypts only whole frames, so a
# 64 KiB frame keeps per-frame overhead (20 B) at 0.03% without holding data back long.
HYPERSWARM_FRAME_PLAINTEXT = 64 * 1024
# hyperdht connectionKeepAlive: an empty frame after this long with nothing sent.
HYPERSWARM_KEEPALIVE_S = 5.0
# hyperdht gives its client 10 s for the UDX path once the handshake is done (passive
# connect timeout, server HANDSHAKE_INITIAL_TIMEOUT): our first frame must be answered by then.
HYPERSWARM_UDX_CONNECT_TIMEOUT_S = 10.0
# Finding the server's record (one FIND_PEER walk): a public-network walk takes a few
# seconds; past this the key is not announced (or the DHT is unreachable).
HYPERSWARM_FIND_PEER_TIMEOUT_S = 20.0
# hyperdht tries 2 relays at once; we try them in turn, at most this many.
HYPERSWARM_MAX_RELAYS = 3
# Hole punching (hyperdht holepuncher.js): the punch socket is classified by PINGs to this
# many DHT nodes (hyperdht: 4), each answer awaited at most half of the timeout.
HYPERSWARM_CLASSIFY_NODES = 4
HYPERSWARM_CLASSIFY_TIMEOUT_S = 2.0
# The first probe to the server leaves with this TTL: it opens our NAT's mapping without
# reaching (and being refused by) the server's NAT (hyperdht HOLEPUNCH_TTL).
HYPERSWARM_PUNCH_TTL = 5
# Both consistent: a probe to every server address each second, 10 rounds (hyperdht).
HYPERSWARM_PUNCH_ROUNDS = 10
HYPERSWARM_PUNCH_INTERVAL_S = 1.0
# `hypergate tele`: how long the relay that carried the last handshake is reused instead
# of a FIND_PEER walk per connection (records live ~20 min; a moved server costs one retry).
TELE_RELAY_CACHE_S = 30.0
# Tries per local connection before it is reset: a second try from a fresh FIND_PEER
# rescues a stale relay or a lost punch race.
TELE_CONNECT_ATTEMPTS = 2
