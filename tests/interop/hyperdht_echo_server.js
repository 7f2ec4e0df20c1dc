'use strict'
// A Node hyperdht server on a local testnet (127.0.0.1 only), for
// tests/interop/test_hyperswarm_node.py. Usage:
//   node hyperdht_echo_server.js BOOTSTRAP_HOST:PORT [echo | pipe:TCP_PORT] [SEED_HEX]
// echo: every connection gets its bytes back, and its end answered with an end.
// pipe:PORT: every connection is piped to a new TCP connection to 127.0.0.1:PORT, as
// hypertele-server does (one hyperdht connection = one TCP stream).
// A "+nat" suffix (echo+nat) makes the server act as if behind a NAT: it never reports a
// public address, so it answers handshakes as firewalled (UNKNOWN) with hole-punch relays.
// Prints {"publicKey": hex, "host", "port"} once listening, then one {"event": ...} line
// per connection; exits when stdin closes.

const net = require('net')
const DHT = require('hyperdht')
const b4a = require('b4a')

const [host, port] = process.argv[2].split(':')
const natted = (process.argv[3] || '').endsWith('+nat')
const mode = (process.argv[3] || 'echo').replace('+nat', '')
const seed = process.argv[4] ? b4a.from(process.argv[4], 'hex') : null
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

async function main() {
  const node = new DHT({ bootstrap: [{ host, port: Number(port) }], host: '127.0.0.1' })
  await node.fullyBootstrapped()
  if (natted) node.remoteAddress = () => null
  const keyPair = DHT.keyPair(seed || undefined)
  const server = node.createServer((socket) => {
    let received = 0
    socket.on('error', () => {})
    out({ event: 'connection', remotePublicKey: b4a.toString(socket.remotePublicKey, 'hex') })
    if (mode === 'echo') {
      socket.on('data', (data) => {
        received += data.byteLength
        socket.write(data)
      })
      socket.on('end', () => {
        out({ event: 'end', received })
        socket.end()
      })
      return
    }
    const target = Number(mode.split(':')[1])
    const tcp = net.connect(target, '127.0.0.1')
    tcp.on('error', () => socket.destroy())
    socket.on('close', () => tcp.destroy())
    socket.pipe(tcp).pipe(socket)
  })
  await server.listen(keyPair)
  const address = server.address()
  out({ publicKey: b4a.toString(keyPair.publicKey, 'hex'), host: address.host, port: address.port })

  process.stdin.resume()
  process.stdin.on('end', async () => {
    await server.close()
    await node.destroy()
    process.exit(0)
  })
}

main().catch((err) => {
  out({ error: String(err && err.stack) })
  process.exit(1)
})
