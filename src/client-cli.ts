#!/usr/bin/env node
import { ConfigError, parseConfig, SETTINGS } from './config.js'
import { RootPeerClient } from './client/client.js'

const USAGE = `Usage:
  root-peer-client send --room R --message TEXT [options]   store one message, print its ack
  root-peer-client sync --room R [--from N] [options]       print the room's records as NDJSON

Options: --bootstrap host:port[,...] (DHT_BOOTSTRAP), --dht-host ADDR (DHT_HOST),
         --discovery-topic S (DISCOVERY_TOPIC), --root-key HEX[,HEX...] (pin the root peer, or a cluster's members), `

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
  const own: Record<string, string> = {}
  const shared: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2)
    const value = inline ?? argv[++i]
    if (['--room', '--message', '--from', '--root-key'].includes(flag)) {
      if (value === undefined) return usage(`${flag} needs a value`)
      own[flag] = value
    } else if (SETTINGS.some(s => s.flag === flag && ['bootstrap', 'dhtHost', 'discoveryTopic'].includes(s.key))) {
      shared.push(flag, value ?? '')
    } else {
      return usage(`unknown option ${JSON.stringify(flag)}`)
    }
  }
  let config
  try {
    config = parseConfig(shared)
  } catch (err) {
    if (err instanceof ConfigError) return usage(err.message)
    throw err
  }
  const room = own['--room']
  if (room === undefined) return usage('--room is required')
  if (command === 'send' && own['--message'] === undefined) return usage('--message is required')
  const from = own['--from'] === undefined ? 0 : Number(own['--from'])
  if (!Number.isSafeInteger(from) || from < 0) return usage('--from must be a non-negative integer')

  const client = new RootPeerClient({
    ...(config.bootstrap ? { bootstrap: config.bootstrap } : {}),
    dhtHost: config.dhtHost,
    discoveryTopic: config.discoveryTopic,
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
