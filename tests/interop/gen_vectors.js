'use strict'
// Prints JSON test vectors made by the real npm packages (compact-encoding, dht-rpc,
// hyperdht, kademlia-routing-table): each entry has the input it was made from and the
// bytes Node produced, so tests/unit/test_dht_vectors.py can check the Python codecs
// byte for byte. Deterministic: same packages, same output.

const c = require('compact-encoding')
const b4a = require('b4a')
const sodium = require('sodium-universal')
const m = require('hyperdht/lib/messages')
const { NS } = require('hyperdht/lib/constants')
const Persistent = require('hyperdht/lib/persistent')
const peer = require('dht-rpc/lib/peer')
const IO = require('dht-rpc/lib/io')
const Table = require('kademlia-routing-table')
const NatSampler = require('nat-sampler')
const HyperNat = require('hyperdht/lib/nat')

const hex = (b) => b4a.toString(b, 'hex')
const buf = (h) => b4a.from(h, 'hex')
const fill = (byte, n) => b4a.alloc(n, byte)
const h32 = (data) => {
  const out = b4a.alloc(32)
  sodium.crypto_generichash(out, data)
  return out
}

const vectors = { primitives: [], messages: [], rpc: [], crypto: {}, table: {} }

// --- compact-encoding primitives ---------------------------------------------------------
function prim(codec, name, value, jsonValue) {
  vectors.primitives.push({
    codec: name,
    value: jsonValue === undefined ? value : jsonValue,
    hex: hex(c.encode(codec, value))
  })
}
for (const n of [0, 1, 0xfc, 0xfd, 0xff, 300, 0xffff, 0x10000, 0xffffffff, 2 ** 32, 2 ** 53 - 1]) {
  prim(c.uint, 'uint', n)
}
for (const n of [0, -1, 1, -2, 2, 1000, -1000, 2 ** 31, -(2 ** 31)]) prim(c.int, 'int', n)
for (const n of [0, 255]) prim(c.uint8, 'uint8', n)
for (const n of [0, 0x1234, 0xffff]) prim(c.uint16, 'uint16', n)
prim(c.uint24, 'uint24', 0x123456)
prim(c.uint32, 'uint32', 0xdeadbeef)
prim(c.uint64, 'uint64', 2 ** 40 + 5)
prim(c.bool, 'bool', true)
prim(c.bool, 'bool', false)
prim(c.buffer, 'buffer', buf(''), '')
prim(c.buffer, 'buffer', buf('aabbcc'), 'aabbcc')
prim(c.buffer, 'buffer', fill(7, 300), hex(fill(7, 300)))
prim(c.string, 'string', 'hi')
prim(c.string, 'string', 'héllo ☃')
prim(c.fixed32, 'fixed32', fill(0x11, 32), hex(fill(0x11, 32)))
prim(c.fixed64, 'fixed64', fill(0x22, 64), hex(fill(0x22, 64)))
prim(c.array(c.uint), 'array_uint', [1, 300, 70000])
prim(c.array(c.uint), 'array_uint', [])
prim(c.ipv4Address, 'ipv4_address', { host: '1.2.3.4', port: 49737 })
prim(c.ipv4Address, 'ipv4_address', { host: '255.0.10.1', port: 1 })
prim(c.ipv6Address, 'ipv6_address', { host: '::1', port: 1 })
prim(c.ipv6Address, 'ipv6_address', { host: '2001:db8::ff00:42:8329', port: 65535 })

// --- hyperdht message bodies -------------------------------------------------------------
const A = { host: '10.0.0.1', port: 5000 }
const B = { host: '10.0.0.2', port: 6000 }
const C = { host: '192.168.1.5', port: 49737 }
function msg(type, value, json) {
  vectors.messages.push({ type, value: json, hex: hex(c.encode(m[type], value)) })
}
// Each case is written once in JSON form (hex strings for bytes) and turned into the
// object Node's encoder wants, so the test sees exactly what Node was given.
function toNode(v) {
  if (Array.isArray(v)) return v.map(toNode)
  if (v === null || typeof v !== 'object') return v
  const out = {}
  for (const [k, x] of Object.entries(v)) {
    out[k] = typeof x === 'string' && /^(noise|payload|publicKey|refresh|signature|token|remoteToken|value)$/.test(k) ? buf(x) : toNode(x)
  }
  return out
}
const cases = [
  ['handshake', { mode: 0, noise: 'aabbcc', peerAddress: null, relayAddress: null }],
  ['handshake', { mode: 2, noise: 'aabbcc', peerAddress: A, relayAddress: null }],
  ['handshake', { mode: 3, noise: 'aabbcc', peerAddress: A, relayAddress: B }],
  ['handshake', { mode: 4, noise: '', peerAddress: null, relayAddress: B }],
  ['holepunch', { mode: 0, id: 1, payload: 'aabbcc', peerAddress: A }],
  ['holepunch', { mode: 4, id: 300, payload: hex(fill(9, 61)), peerAddress: null }],
  ['peer', { publicKey: hex(fill(0x22, 32)), relayAddresses: [] }],
  ['peer', { publicKey: hex(fill(0x22, 32)), relayAddresses: [A, B, C] }],
  ['announce', { peer: { publicKey: hex(fill(0x22, 32)), relayAddresses: [] }, refresh: null, signature: hex(fill(0x33, 64)), bump: 0 }],
  ['announce', { peer: { publicKey: hex(fill(0x22, 32)), relayAddresses: [A] }, refresh: hex(fill(0x44, 32)), signature: hex(fill(0x33, 64)), bump: 1700000000000 }],
  ['announce', { peer: null, refresh: hex(fill(0x44, 32)), signature: null, bump: 0 }],
  ['mutableSignable', { seq: 5, value: 'deadbeef' }],
  ['mutablePutRequest', { publicKey: hex(fill(1, 32)), seq: 70000, value: 'cafe', signature: hex(fill(2, 64)) }],
  ['mutableGetResponse', { seq: 0, value: '', signature: hex(fill(3, 64)) }],
  ['pluginRequest', { plugin: 'blind-relay', version: 1, command: 2, value: null }],
  ['pluginRequest', { plugin: 'x', version: 3, command: 0, value: 'ff' }],
  ['holepunchPayload', { error: 0, firewall: 2, round: 0, connected: false, punching: true, addresses: [{ host: '3.3.3.3', port: 4000 }], remoteAddress: null, token: hex(fill(0x11, 32)), remoteToken: null }],
  ['holepunchPayload', { error: 3, firewall: 3, round: 7, connected: true, punching: false, addresses: [], remoteAddress: A, token: null, remoteToken: hex(fill(0x55, 32)) }],
  ['holepunchPayload', { error: 0, firewall: 0, round: 0, connected: false, punching: false, addresses: null, remoteAddress: null, token: null, remoteToken: null }],
  ['noisePayload', { version: 1, error: 0, firewall: 0, holepunch: null, addresses4: [C], addresses6: [], udx: { reusableSocket: false, id: 0x12345678, seq: 0 }, secretStream: {}, relayThrough: null, relayAddresses: null }],
  ['noisePayload', { version: 1, error: 0, firewall: 2, holepunch: { id: 0, relays: [{ relayAddress: A, peerAddress: B }, { relayAddress: C, peerAddress: B }] }, addresses4: [], addresses6: [{ host: '2001:db8::1', port: 80 }], udx: { reusableSocket: true, id: 7, seq: 300 }, secretStream: null, relayThrough: { publicKey: hex(fill(0x66, 32)), token: hex(fill(0x77, 32)) }, relayAddresses: [A, C] }],
  ['noisePayload', { version: 1, error: 1, firewall: 1, holepunch: null, addresses4: [], addresses6: [], udx: null, secretStream: null, relayThrough: null, relayAddresses: [] }]
]
for (const [type, json] of cases) msg(type, toNode(json), json)
// lookupRawReply takes already-encoded peers (c.raw) on the encode side.
for (const json of [
  { peers: [], bump: 0 },
  { peers: [{ publicKey: hex(fill(0x22, 32)), relayAddresses: [A] }, { publicKey: hex(fill(0x23, 32)), relayAddresses: [] }], bump: 1700000000000 }
]) {
  const raw = json.peers.map((p) => c.encode(m.peer, toNode(p)))
  vectors.messages.push({ type: 'lookupRawReply', value: json, hex: hex(c.encode(m.lookupRawReply, { peers: raw, bump: json.bump })) })
}

// --- dht-rpc request/response datagrams, made by io.js itself ---------------------------
const fakeUdx = { watchNetworkInterfaces: () => ({ on() {}, destroy() {} }) }
const LOCAL_ID = h32(buf('7f00000149c2'))
const CLOSER = [A, B, C]
const io = new IO({ id: LOCAL_ID, closest: () => CLOSER }, fakeUdx, {})
io._secrets = [fill(0xa1, 32), fill(0xa2, 32)]
const serverSocket = { sent: null, trySend(b) { this.sent = b4a.from(b) } }
io.serverSocket = serverSocket
io.clientSocket = { sent: null, trySend(b) { this.sent = b4a.from(b) } }

function request(json) {
  io.ephemeral = !json.withId
  io._tid = json.tid
  const req = io.createRequest(toNode(json.to), json.token ? buf(json.token) : null, json.internal, json.command, json.target ? buf(json.target) : null, json.value === null ? null : buf(json.value), null, 0)
  const socket = json.withId ? serverSocket : io.clientSocket
  const bytes = req._encodeRequest(req.token, req.value, req.to, socket)
  req.destroyed = true
  io.inflight.length = 0
  vectors.rpc.push({
    kind: 'request',
    value: { ...json, id: json.withId ? hex(LOCAL_ID) : null },
    hex: hex(bytes)
  })
}
request({ tid: 0x989a, to: { host: '127.0.0.1', port: 49738 }, internal: true, command: 0, token: null, target: null, value: null, withId: false })
request({ tid: 0x985c, to: { host: '127.0.0.1', port: 49737 }, internal: true, command: 1, token: null, target: null, value: '4dc2', withId: false })
request({ tid: 0x9aaa, to: { host: '127.0.0.1', port: 49737 }, internal: true, command: 2, token: null, target: hex(fill(0xa4, 32)), value: null, withId: true })
request({ tid: 65535, to: { host: '8.8.4.4', port: 1 }, internal: false, command: 4, token: hex(fill(0x5e, 32)), target: hex(fill(0xc5, 32)), value: hex(fill(1, 300)), withId: true })
request({ tid: 1, to: { host: '1.2.3.4', port: 65535 }, internal: false, command: 0, token: null, target: hex(fill(0xc5, 32)), value: '', withId: false })

function response(json) {
  io.ephemeral = !json.withId
  const socket = json.withId ? serverSocket : io.clientSocket
  const req = { tid: json.tid, target: json.hasTarget ? fill(0, 32) : null, destroyed: false, ttl: 0, _io: io }
  const Req = io.createRequest(A, null, false, 0, null, null, null, 0).constructor
  io.inflight.length = 0
  Req.prototype._sendReply.call(req, json.error, json.value === null ? null : buf(json.value), json.token, json.closerNodes, toNode(json.to), socket)
  const token = json.token ? hex(io.token(toNode(json.to), 1)) : null
  vectors.rpc.push({
    kind: 'response',
    value: {
      tid: json.tid,
      to: json.to,
      id: json.withId ? hex(LOCAL_ID) : null,
      token,
      closerNodes: json.closerNodes && json.hasTarget ? CLOSER : [],
      error: json.error,
      value: json.value
    },
    hex: hex(socket.sent)
  })
}
response({ tid: 0x9aaa, to: { host: '127.0.0.1', port: 49738 }, error: 0, value: null, token: false, closerNodes: false, hasTarget: false, withId: false })
response({ tid: 0xb743, to: { host: '127.0.0.1', port: 49739 }, error: 0, value: null, token: false, closerNodes: true, hasTarget: true, withId: true })
response({ tid: 0x985e, to: { host: '127.0.0.1', port: 37088 }, error: 1, value: null, token: false, closerNodes: true, hasTarget: true, withId: false })
response({ tid: 7, to: { host: '5.6.7.8', port: 1234 }, error: 0, value: hex(fill(0x21, 33)), token: true, closerNodes: true, hasTarget: true, withId: true })
response({ tid: 8, to: { host: '5.6.7.8', port: 1234 }, error: 2, value: null, token: true, closerNodes: false, hasTarget: true, withId: false })

// --- ids, namespaces, signatures, tokens -------------------------------------------------
vectors.crypto.nodeIds = [
  { host: '1.2.3.4', port: 49737 },
  { host: '127.0.0.1', port: 49737 },
  { host: '88.99.3.86', port: 49737 }
].map((a) => ({ ...a, id: hex(peer.id(a.host, a.port)) }))
vectors.crypto.namespaces = Object.fromEntries(Object.entries(NS).map(([k, v]) => [k, hex(v)]))

const keyPair = { publicKey: b4a.alloc(32), secretKey: b4a.alloc(64) }
const seed = fill(0x01, 32)
sodium.crypto_sign_seed_keypair(keyPair.publicKey, keyPair.secretKey, seed)
const target = h32(keyPair.publicKey)
const receiverId = peer.id('127.0.0.1', 49738)
const annToken = fill(0x5a, 32)
const announces = []
for (const [relayAddresses, refresh] of [[[], null], [[A, B], fill(0x44, 32)]]) {
  const ann = { peer: { publicKey: keyPair.publicKey, relayAddresses }, refresh, signature: null }
  announces.push({
    relayAddresses,
    refresh: refresh ? hex(refresh) : null,
    announceSignature: hex(Persistent.signAnnounce(target, annToken, receiverId, ann, keyPair)),
    unannounceSignature: hex(Persistent.signUnannounce(target, annToken, receiverId, ann, keyPair))
  })
}
vectors.crypto.announce = {
  seed: hex(seed),
  publicKey: hex(keyPair.publicKey),
  target: hex(target),
  receiverId: hex(receiverId),
  token: hex(annToken),
  cases: announces
}
vectors.crypto.mutable = { seed: hex(seed), seq: 3, value: 'cafebabe', signature: hex(Persistent.signMutable(3, buf('cafebabe'), keyPair)) }

// Tokens: fixed secrets, then what io._drain's rotation (every 10th drain) makes of them.
const tio = new IO({ id: LOCAL_ID }, fakeUdx, {})
tio._secrets = [fill(0x01, 32), fill(0x02, 32)]
const tokens = []
for (let rotation = 0; rotation < 3; rotation++) {
  tokens.push({ rotation, host: '1.2.3.4', token0: hex(tio.token({ host: '1.2.3.4' }, 0)), token1: hex(tio.token({ host: '1.2.3.4' }, 1)) })
  for (let i = 0; i < 10; i++) tio._drain()
}
vectors.crypto.tokens = { secret0: hex(fill(0x01, 32)), secret1: hex(fill(0x02, 32)), rounds: tokens }

// --- routing table order -----------------------------------------------------------------
const tableId = h32(b4a.from('local'))
const table = new Table(tableId, { k: 20 })
const added = []
for (let i = 0; i < 400; i++) {
  const id = h32(b4a.from('node-' + i))
  added.push({ id: hex(id), accepted: table.add({ id }) })
}
// A few ids that share long prefixes with the local id, so deep rows are exercised.
for (let bits = 1; bits <= 12; bits++) {
  const id = b4a.from(tableId)
  id[Math.floor(bits / 8)] ^= 0x80 >> (bits % 8)
  id[31] ^= bits
  added.push({ id: hex(id), accepted: table.add({ id }) })
}
const targets = [tableId, h32(b4a.from('t1')), h32(b4a.from('t2')), added[5].id].map((t) => (typeof t === 'string' ? buf(t) : t))
vectors.table = {
  localId: hex(tableId),
  k: 20,
  added,
  size: table.size,
  closest: targets.map((t) => ({ target: hex(t), ids: table.closest(t).map((n) => hex(n.id)) }))
}

// --- NAT sampling: host/port after each sample ------------------------------------------
const natSequences = [
  [['1.1.1.1', 10], ['1.1.1.1', 10], ['1.1.1.1', 10]],
  [['1.1.1.1', 10], ['1.1.1.1', 11], ['1.1.1.1', 12], ['1.1.1.1', 13], ['1.1.1.1', 14]],
  [['1.1.1.1', 10], ['2.2.2.2', 10], ['1.1.1.1', 10], ['1.1.1.1', 10], ['1.1.1.1', 10], ['1.1.1.1', 10]]
]
// A long mixed run exercises the 16-sample ring and its 4-sample match window.
const long = []
for (let i = 0; i < 60; i++) long.push([i % 7 === 0 ? '9.9.9.9' : '5.5.5.5', i % 5 === 0 ? 2000 + i : 1000])
natSequences.push(long)
vectors.nat = natSequences.map((samples) => {
  const sampler = new NatSampler()
  return samples.map(([host, port]) => {
    const hits = sampler.add(host, port)
    return { host, port, hits, resultHost: sampler.host, resultPort: sampler.port }
  })
})

// --- per-socket firewall classification (hyperdht/lib/nat.js) ---------------------------
// Each case: is the DHT firewalled, then (seenAs, answeredBy) pairs; after each, the class
// and the addresses a hyperdht peer would advertise.
const fwCases = [
  [true, [['1.1.1.1', 100], ['1.1.1.1', 100], ['1.1.1.1', 100]]],
  [true, [['1.1.1.1', 100], ['1.1.1.1', 101], ['1.1.1.1', 102]]],
  [true, [['1.1.1.1', 100], ['1.1.1.1', 100], ['1.1.1.1', 101], ['1.1.1.1', 102]]],
  [true, [['1.1.1.1', 100], ['1.1.1.1', 100], ['2.2.2.2', 200], ['2.2.2.2', 200]]],
  [true, [['1.1.1.1', 100], ['1.1.1.1', 100], ['2.2.2.2', 200], ['3.3.3.3', 300], ['4.4.4.4', 1]]],
  [true, [['1.1.1.1', 100], ['1.1.1.1', 100], ['1.1.1.1', 100], ['1.1.1.1', 7], ['1.1.1.1', 8]]],
  [false, [['1.1.1.1', 100], ['1.1.1.1', 101]]]
]
vectors.firewall = fwCases.map(([firewalled, samples]) => {
  const nat = new HyperNat({ firewalled, nodes: { latest: null, length: 0 } }, null, null)
  const steps = samples.map(([host, port], i) => {
    const from = { host: '10.0.0.' + (i + 1), port: 49737 }
    nat.add({ host, port }, from)
    return { seenAs: [host, port], answeredBy: [from.host, from.port], firewall: nat.firewall, addresses: nat.addresses && nat.addresses.map((a) => [a.host, a.port]) }
  })
  // A repeated answer from the same node is ignored.
  const last = samples[samples.length - 1]
  nat.add({ host: last[0], port: last[1] }, { host: '10.0.0.1', port: 49737 })
  steps.push({ seenAs: last, answeredBy: ['10.0.0.1', 49737], firewall: nat.firewall, addresses: nat.addresses && nat.addresses.map((a) => [a.host, a.port]) })
  return { firewalled, steps }
})

process.stdout.write(JSON.stringify(vectors, null, 1) + '\n')
