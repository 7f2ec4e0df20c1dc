'use strict'
// A local hyperdht testnet on 127.0.0.1 driven over stdin/stdout, one JSON object per
// line, for tests/interop/test_dht_node_interop.py. It never contacts anything but
// 127.0.0.1: every node is given the testnet's own bootstrap node.
//
// Prints {"ready": true, "bootstrap": [{host, port}], "nodes": [{host, port, id}]} first,
// then answers each command line {"id": n, "cmd": ..., ...} with {"id": n, ...}.

const readline = require('readline')
const b4a = require('b4a')
const createTestnet = require('hyperdht/testnet')
const DHT = require('hyperdht')

const size = Number(process.argv[2] || 5)
const hex = (b) => (b ? b4a.toString(b, 'hex') : null)

function hasNode(node, host, port) {
  return node.toArray().some((n) => n.host === host && n.port === port)
}

async function main() {
  const testnet = await createTestnet(size, { host: '127.0.0.1' })
  const nodes = testnet.nodes
  const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
  out({
    ready: true,
    bootstrap: testnet.bootstrap,
    nodes: nodes.map((n) => ({ host: '127.0.0.1', port: n.address().port, id: hex(n.id) }))
  })

  const commands = {
    // How many testnet nodes have host:port in their routing table.
    async tablesWith({ host, port }) {
      return { count: nodes.filter((n) => hasNode(n, host, port)).length }
    },
    async ping({ host, port, from = 0 }) {
      const res = await nodes[from].ping({ host, port })
      return { fromId: hex(res.from.id), to: res.to }
    },
    // A FIND_NODE query from a testnet node; which nodes ended up among the closest
    // replies (those count only if they answered with a valid id).
    async findNode({ target, from = 0 }) {
      const q = nodes[from].findNode(b4a.from(target, 'hex'))
      await q.finished()
      return { closest: q.closestReplies.map((r) => ({ host: r.from.host, port: r.from.port, id: hex(r.from.id) })) }
    },
    async announce({ topic, seed, from = 0 }) {
      const keyPair = DHT.keyPair(b4a.from(seed, 'hex'))
      await nodes[from].announce(b4a.from(topic, 'hex'), keyPair).finished()
      return { publicKey: hex(keyPair.publicKey) }
    },
    async lookup({ topic, from = 0 }) {
      const found = new Set()
      for await (const data of nodes[from].lookup(b4a.from(topic, 'hex'))) {
        for (const peer of data.peers) found.add(hex(peer.publicKey))
      }
      return { publicKeys: [...found].sort() }
    },
    async destroy() {
      await testnet.destroy()
      setImmediate(() => process.exit(0))
      return {}
    }
  }

  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', async (line) => {
    const msg = JSON.parse(line)
    try {
      out({ id: msg.id, ...(await commands[msg.cmd](msg)) })
    } catch (err) {
      out({ id: msg.id, error: String(err && err.message) })
    }
  })
  rl.on('close', async () => {
    await testnet.destroy()
    process.exit(0)
  })
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack) + '\n')
  process.exit(1)
})
