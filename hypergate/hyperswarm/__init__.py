"""Speaking Hyperswarm to Node peers: a hyperdht client (IK handshake over the DHT,
UDX stream, secret-stream framing). Sans-IO protocol pieces in noise_ik.py and
secret_stream.py; the trio driver in connect.py; `hypergate tele` in tele.py."""
