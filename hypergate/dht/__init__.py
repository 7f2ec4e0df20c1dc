"""Hyperswarm DHT (npm `dht-rpc` + `hyperdht`) wire protocol and node, on trio.

Sans-IO: encoding (compact-encoding), messages / payloads (every datagram and body),
crypto (ids, namespaces, signatures, tokens), routing_table, query, storage, relay, nat,
ratelimit. trio drivers: node (DHTNode), operations (queries, announce/lookup),
serving (answering requests), announcer (keeping a server reachable), bootstrap.
"""
