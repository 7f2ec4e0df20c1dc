"""Hyperswarm DHT (npm `dht-rpc` + `hyperdht`) wire protocol and node, on trio.

Sans-IO: encoding (compact-encoding), messages / payloads (every datagram and body),
crypto (ids, namespaces, signatures, tokens), routing_table, query, storage, relay, nat,
ratelimit. trio drivers: node (DHTNode), operations (queries, announce/lookup, client
handshake/hole-punch round trips), serving (answering requests), announcer (keeping a
server reachable), bootstrap.

A server (provider) and a client (gateway), in outline:

    async with open_dht_node(NodeConfig(bootstrap=PUBLIC_BOOTSTRAP)) as node:
        node.add_server(key_pair, on_handshake, on_holepunch)   # PeerMessage -> PeerReply
        async with trio.open_nursery() as nursery:
            announcer = await nursery.start(ServerAnnouncer(node, key_pair).run)
            ...
    # elsewhere
        for result in await node.find_peer(server_public_key):
            reply = await node.peer_handshake(server_public_key, noise_msg1, result.node)
"""
