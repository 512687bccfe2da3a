#!/usr/bin/env node
import { isIP } from 'node:net'
import { RootPeerClient } from './client.js'
import { DEFAULT_DISCOVERY_TOPIC, parseBootstrap } from './protocol/discovery.js'

const USAGE = `Usage:
  root-peer-client send --room R --message TEXT [options]   store one message, print its ack
  root-peer-client sync --room R [--from N] [options]       print the room's records as NDJSON

Options: --bootstrap host:port[,...] (DHT_BOOTSTRAP), --dht-host ADDR (DHT_HOST),
         --discovery-topic S (DISCOVERY_TOPIC), --root-key HEX[,HEX...] (pin the root peer, or a cluster's members), `

const DHT_SETTINGS: Record<string, string> = { '--bootstrap': 'DHT_BOOTSTRAP', '--dht-host': 'DHT_HOST', '--discovery-topic': 'DISCOVERY_TOPIC' }

main(process.argv.slice(2)).then(code => process.exit(code), err => {
  console.error(`root-peer-client: ${err.message ?? err}`)
  process.exit(1)
})

async function main (argv: string[]): Promise<number> {
  const command = argv.shift()
  if (command === undefined || command === '--help' || (command !== 'send' && command !== 'sync')) {
    console.error(USAGE)
    return command === '--help' ? 0 : 2
  }
  // the DHT's three settings as the daemon names them: the flag, else its environment variable
  const own: Record<string, string> = {}
  for (const flag of Object.keys(DHT_SETTINGS)) {
    const env = process.env[DHT_SETTINGS[flag]]
    if (env !== undefined && env !== '') own[flag] = env
  }
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2)
    const value = inline ?? argv[++i]
    if (!['--room', '--message', '--from', '--root-key', ...Object.keys(DHT_SETTINGS)].includes(flag)) return usage(`unknown option ${JSON.stringify(flag)}`)
    if (value === undefined) return usage(`${flag} needs a value`)
    own[flag] = value
  }
  let bootstrap
  try {
    bootstrap = parseBootstrap(own['--bootstrap'] ?? '')
  } catch (err) {
    return usage(`--bootstrap (DHT_BOOTSTRAP): ${(err as Error).message}`)
  }
  const dhtHost = own['--dht-host'] ?? '0.0.0.0'
  if (isIP(dhtHost) === 0) return usage(`--dht-host (DHT_HOST): ${JSON.stringify(dhtHost)} is not an IP address (for example 0.0.0.0 or 127.0.0.1)`)
  const discoveryTopic = own['--discovery-topic'] ?? DEFAULT_DISCOVERY_TOPIC
  if (discoveryTopic.length === 0 || discoveryTopic.length > 1024) return usage('--discovery-topic (DISCOVERY_TOPIC): must be a string of 1 to 1024 characters')
  const room = own['--room']
  if (room === undefined) return usage('--room is required')
  if (command === 'send' && own['--message'] === undefined) return usage('--message is required')
  const from = own['--from'] === undefined ? 0 : Number(own['--from'])
  if (!Number.isSafeInteger(from) || from < 0) return usage('--from must be a non-negative integer')

  const client = new RootPeerClient({
    ...(bootstrap !== null ? { bootstrap } : {}),
    dhtHost,
    discoveryTopic,
    ...(own['--root-key'] ? { rootPublicKeys: own['--root-key'].split(',') } : {})
  })
  // what a root peer sent that failed its check was dropped: said on stderr, so stdout stays the records
  client.on('frame-rejected', ({ type, reason }) => console.error(`root-peer-client: dropped a ${type ?? 'malformed'} frame: ${reason}`))
  client.on('record-rejected', ({ messageIndex, reason }) => console.error(`root-peer-client: dropped record ${messageIndex ?? '?'}: ${reason}`))
  try {
    await client.ready()
    if (command === 'send') {
      const ack = await client.sendMessage(room, own['--message'])
      console.log(JSON.stringify({ roomName: room, ...ack }))
    } else {
      for await (const page of client.sync(room, from)) {
        for (const m of page.messages) console.log(JSON.stringify(m))
      }
    }
    return 0
  } finally {
    await client.close()
  }
}

function usage (message: string): number {
  console.error(`root-peer-client: ${message}\n${USAGE}`)
  return 2
}
