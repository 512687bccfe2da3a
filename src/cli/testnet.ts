import createTestnet from 'hyperdht/testnet.js'
import { parseInteger } from '../config.js'

// A firewalled DHT node (every node starts as one) samples its NAT from 3 nodes of its routing table, where
// the first node of a testnet never is; with fewer answers a server aborts each hole punch, and a client's
// dial to it can hang until UDX gives up (~13 s; hyperdht 6.33-6.34: docs/client.md, "Connecting")
const MIN_NODES = 4

/** `root-peer testnet`: a small DHT on 127.0.0.1 for running a root peer and clients offline. */
export async function runTestnet (argv: string[]): Promise<void> {
  let port = 49737
  let nodes = 10
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2)
    const value = inline ?? argv[++i] ?? ''
    if (flag === '--port') port = parseInteger(value, '--port', 0, 65535)
    else if (flag === '--nodes') nodes = parseInteger(value, '--nodes', MIN_NODES, 50)
    else throw new TypeError(`testnet: unknown option ${JSON.stringify(flag)} (options: --port N, --nodes N)`)
  }
  const net = await createTestnet(nodes, { host: '127.0.0.1', port })
  const bootstrap = net.bootstrap.map(b => `${b.host}:${b.port}`).join(',')
  console.log(`DHT_BOOTSTRAP=${bootstrap}`)
  console.error(`loopback DHT testnet of ${nodes} nodes running; use DHT_BOOTSTRAP=${bootstrap} DHT_HOST=127.0.0.1. Ctrl-C stops it.`)
  const stop = (): void => {
    net.destroy().then(() => process.exit(0), () => process.exit(1))
  }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
}
