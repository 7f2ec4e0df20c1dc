'use strict'
// A Node hyperdht server and client that know only the DHT node given on the command line
// (host:port, on 127.0.0.1). The server announces its key, the client connects to it
// through that node (handshake and hole punch relayed by it) and they echo one message.
// Before that, the server announces a topic and the client looks it up (stored and
// served by that node). Prints one JSON line:
// {"ok": true, "echo": "...", "serverKey": hex, "topicPeers": [hex]} or {"ok": false, "error": ...}.

const DHT = require('hyperdht')
const b4a = require('b4a')

const [host, port] = process.argv[2].split(':')
const bootstrap = [{ host, port: Number(port) }]
// Everything is on loopback; a working path takes well under a second.
const DEADLINE_MS = 20000

async function main() {
  const serverNode = new DHT({ bootstrap, host: '127.0.0.1' })
  const clientNode = new DHT({ bootstrap, host: '127.0.0.1' })
  await serverNode.fullyBootstrapped()
  await clientNode.fullyBootstrapped()
  const keyPair = DHT.keyPair(b4a.alloc(32, 0x42))
  const topic = b4a.alloc(32, 0x77)
  await serverNode.announce(topic, keyPair).finished()
  const topicPeers = []
  for await (const data of clientNode.lookup(topic)) {
    for (const peer of data.peers) topicPeers.push(b4a.toString(peer.publicKey, 'hex'))
  }
  const server = serverNode.createServer((socket) => {
    socket.on('data', (data) => socket.write(data))
    socket.on('error', () => {})
  })
  await server.listen(keyPair)

  const socket = clientNode.connect(keyPair.publicKey)
  const echo = await new Promise((resolve, reject) => {
    socket.on('error', reject)
    socket.on('open', () => socket.write(b4a.from('hello through the python relay')))
    socket.on('data', (data) => resolve(b4a.toString(data)))
  })
  process.stdout.write(JSON.stringify({ ok: true, echo, serverKey: b4a.toString(keyPair.publicKey, 'hex'), topicPeers }) + '\n')
  socket.destroy()
  await server.close()
  await serverNode.destroy()
  await clientNode.destroy()
}

const timer = setTimeout(() => {
  process.stdout.write(JSON.stringify({ ok: false, error: 'deadline' }) + '\n')
  process.exit(2)
}, DEADLINE_MS)

main().then(
  () => {
    clearTimeout(timer)
    process.exit(0)
  },
  (err) => {
    process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.message) }) + '\n')
    process.exit(1)
  }
)
