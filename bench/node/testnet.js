#!/usr/bin/env node
// A local hyperdht testnet for the hypertele baseline: a few DHT nodes on 127.0.0.1.
// Prints "bootstrap PORT" once bootstrapped, then runs until SIGTERM/SIGINT.
const createTestnet = require('hyperdht/testnet')

const size = Number(process.argv[2] || 3)

async function main () {
  const testnet = await createTestnet(size, { host: '127.0.0.1' })
  console.log(`bootstrap ${testnet.bootstrap[0].port}`)
  const stop = async () => {
    await testnet.destroy()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch(err => {
  console.error(err)
  process.exit(1)
})
