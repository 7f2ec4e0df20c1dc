"""Small HTTP endpoints on one tiny h11 server: the provider's fingerprint resolver and
the gateway's `/unlimited`."""
