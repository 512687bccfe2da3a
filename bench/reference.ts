// The reference the bench measures the daemon against (issue: catch-up and ingest at the speed of the connection):
// what a root peer must do on the wire and nothing else. A Hyperswarm server on the discovery topic that sends the
// announcement, parses each frame once, acks each `message` with an index, and answers `sync-request` pages from
// rooms kept in memory as the daemon's page entries: no Hypercore, no disk, no dedup, no budgets. Not the daemon.
// Run as a child process by bench/run.ts; prints one JSON line when it is announced.
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import crypto from 'hypercore-crypto'

const bootstrap = (process.env.DHT_BOOTSTRAP ?? '').split(',').map(hp => ({ host: hp.split(':')[0], port: Number(hp.split(':')[1]) }))
if (bootstrap.length === 0 || bootstrap.some(b => !(b.port > 0))) throw new Error('DHT_BOOTSTRAP: a loopback testnet is required')
const swarm = new Hyperswarm({ dht: new HyperDHT({ bootstrap, host: '127.0.0.1' }), maxPeers: 4096 })
const publicKey = swarm.keyPair.publicKey.toString('hex')
const limits = { maxFrameBytes: 262144, maxMessageBytes: 65536, defaultPageMessages: 500, maxPageMessages: 1000, maxPageBytes: 524288 }
const announcement = JSON.stringify({ type: 'root-peer-announcement', version: 2, publicKey, limits })
const rooms = new Map<string, string[]>()

swarm.on('connection', (conn: NoiseStream) => {
  conn.on('error', () => {})
  conn.write(announcement)
  conn.on('data', (data: Buffer) => {
    let f: any
    try { f = JSON.parse(data.toString('utf8')) } catch { return }
    const name = JSON.stringify(f.roomName)
    let room = rooms.get(f.roomName)
    if (room === undefined) rooms.set(f.roomName, room = [])
    if (f.type === 'message') {
      const index = room.length
      room.push('{"message":' + JSON.stringify(f.message) + ',"storedAt":' + Date.now() + ',"fromPeer":"' + publicKey + '","senderPublicKey":"' + publicKey +
        '","id":' + JSON.stringify(f.id) + ',"messageIndex":' + index + '}')
      conn.write('{"type":"message-ack","roomName":' + name + ',"id":' + JSON.stringify(f.id) + ',"messageIndex":' + index + '}')
    } else if (f.type === 'sync-request') {
      const from = f.lastIndex ?? 0
      const entries = room.slice(from, from + Math.min(f.limit ?? 500, 1000))
      const next = from + entries.length
      conn.write('{"type":"sync-response","roomName":' + name + ',"messages":[' + entries.join(',') + '],"totalMessages":' + room.length +
        ',"nextIndex":' + next + ',"hasMore":' + (next < room.length) + ',"firstIndex":0' + (f.requestId === undefined ? '}' : ',"requestId":' + JSON.stringify(f.requestId) + '}'))
    } else if (f.type === 'register-room') {
      conn.write('{"type":"room-registered","roomName":' + name + ',"messageCount":' + room.length + (f.requestId === undefined ? '}' : ',"requestId":' + JSON.stringify(f.requestId) + '}'))
    }
  })
})

await swarm.join(crypto.hash(Buffer.from('holepunch-root-peer-discovery')), { server: true, client: false }).flushed()
console.log(JSON.stringify({ msg: 'announced on the discovery topic', publicKey }))
process.on('SIGTERM', () => { swarm.destroy().finally(() => process.exit(0)) })
