// A Node udx-native peer for tests/interop/test_udx_node.py.
//
//   node udx_peer.js echo        echo every byte (and MESSAGE) back; end after the peer's END
//   node udx_peer.js send N      send N random bytes then END; collect what comes back
//   node udx_peer.js destroy     destroy() the stream (UDX DESTROY) at the first data
//
// Protocol on stdio, one JSON object a line:
//   stdout {"port", "id"}                     our UDX socket port and stream id
//   stdin  {"port", "id", "host"}             where the Python stream is (or a proxy)
//   stdout {"connected": true}
//   stdout {"sent_sha256", "sent_bytes"}      (send mode, once everything is written)
//   stdout {"received_sha256", "received_bytes", "cpu_s"} once the peer's END arrived
//   stdout {"closed": true, "cpu_s"} / {"error": "..."}
const UDX = require('udx-native')
const crypto = require('crypto')
const readline = require('readline')

const [mode, countArg] = process.argv.slice(2)
const udx = new UDX()
const socket = udx.createSocket()
socket.bind(0, '127.0.0.1')
const id = crypto.randomBytes(4).readUInt32LE(0)
const stream = udx.createStream(id)
const cpuSeconds = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6 }
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

say({ port: socket.address().port, id })

const received = crypto.createHash('sha256')
let receivedBytes = 0

stream.on('error', (err) => {
  say({ error: String(err && err.message ? err.message : err) })
  process.exit(1)
})
stream.on('data', (data) => {
  received.update(data)
  receivedBytes += data.length
  if (mode === 'echo') stream.write(data)
  if (mode === 'destroy') stream.destroy()
})
stream.on('message', (message) => {
  if (mode === 'echo') stream.send(message) // unreliable datagrams are echoed too
})
stream.on('end', () => {
  say({ received_sha256: received.digest('hex'), received_bytes: receivedBytes, cpu_s: cpuSeconds() })
  if (mode === 'echo') stream.end()
})
stream.on('close', async () => {
  say({ closed: true, cpu_s: cpuSeconds() })
  await socket.close()
  process.exit(0)
})

const lines = readline.createInterface({ input: process.stdin })
lines.once('line', (line) => {
  const peer = JSON.parse(line)
  stream.connect(socket, peer.id, peer.port, peer.host || '127.0.0.1')
  say({ connected: true, cpu_s: cpuSeconds() })
  if (mode === 'send') {
    const total = Number(countArg)
    const sent = crypto.createHash('sha256')
    const chunk = 64 * 1024
    for (let offset = 0; offset < total; offset += chunk) {
      const data = crypto.randomBytes(Math.min(chunk, total - offset))
      sent.update(data)
      stream.write(data)
    }
    stream.end()
    say({ sent_sha256: sent.digest('hex'), sent_bytes: total })
  }
})
