import assert from 'node:assert/strict'
import { EventEmitter, once } from 'node:events'
import { test } from 'node:test'
import BlindRelay, { type Client as RelayClient } from 'blind-relay'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import { Relay, type RelayLimits } from '../src/connection/relay.js'
import { Metrics } from '../src/monitor/metrics.js'
import type { ChatRootPeer } from '../src/root-peer.js'
import { RawPeer, client, rootPeer, teardown, testnet, tmpDir } from './helpers.js'

type Ctx = Parameters<typeof teardown>[0]

/** The arguments of the next `name` event; fails after `ms` instead of waiting forever. */
function next (emitter: EventEmitter, name: string, ms = 20_000): Promise<any[]> {
  return once(emitter, name, { signal: AbortSignal.timeout(ms) }).catch(err => {
    throw err.name === 'AbortError' ? new Error(`no ${name} event within ${ms} ms`) : err
  })
}

const SECRET = 'meet at the old bridge at nine'

/** A member's DHT node on the testnet, destroyed after the test. */
// a member behind a NAT: without the quick firewall probe a new node stays firewalled, so on loopback it is
// reached by hole punching (off on the listening member) or the relay, never directly
function node (t: Ctx, net: Testnet): HyperDHT {
  const dht = new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1', quickFirewall: false })
  teardown(t, () => dht.destroy())
  return dht
}

/** A root peer on the testnet with its metrics, its relay announced on the DHT. */
async function relaying (t: Ctx, net: Testnet, opts: Parameters<typeof rootPeer>[2] = {}): Promise<{ rp: ChatRootPeer, relay: Relay, metric: (name: string, labels?: Record<string, string>) => Promise<number> }> {
  const metrics = new Metrics()
  const rp = await rootPeer(t, net, opts)
  metrics.attach(rp)
  const relay = rp.relay!
  await relay.flushed()
  const metric = async (name: string, labels: Record<string, string> = {}): Promise<number> => {
    const { values } = await metrics.registry.getSingleMetric(name)!.get()
    const v = values.find(v => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
    return v?.value ?? 0
  }
  return { rp, relay, metric }
}

interface Tapped { conn: any, sent: Buffer[], received: Buffer[] }

/**
 * Two members that can only meet through `relayKey`: B listens with hole punching off and relaying
 * forced, A dials it through the relay without the same-host shortcut. Each side's raw UDX writes are tapped.
 */
async function relayedPair (t: Ctx, net: Testnet, relayKey: Buffer): Promise<{ a: Tapped, b: Tapped }> {
  let accepted: (conn: any) => void = () => {}
  const bSide = new Promise<any>(resolve => { accepted = resolve })
  const server = node(t, net).createServer({ holepunch: false, shareLocalAddress: false, relayThrough: relayKey }, conn => accepted(conn))
  await server.listen()
  const aConn: any = node(t, net).connect(server.publicKey!, { relayThrough: relayKey, localConnection: false })
  aConn.on('error', () => {})
  await next(aConn, 'open')
  const bConn = await bSide
  bConn.on('error', () => {})
  return { a: tap(aConn), b: tap(bConn) }
}

function tap (conn: any): Tapped {
  const tapped: Tapped = { conn, sent: [], received: [] }
  const raw = conn.rawStream
  const write = raw.write.bind(raw)
  raw.write = (data: Buffer, ...rest: unknown[]) => {
    tapped.sent.push(Buffer.from(data))
    return write(data, ...rest)
  }
  conn.on('data', (data: Buffer) => tapped.received.push(data))
  return tapped
}

/** Resolves once `conn` has received `bytes` bytes of data in all. */
function received (tapped: Tapped, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (Buffer.concat(tapped.received).length < bytes) return
      tapped.conn.off('data', check)
      resolve()
    }
    tapped.conn.on('data', check)
    tapped.conn.once('close', () => reject(new Error('closed before the data arrived')))
    setTimeout(() => reject(new Error(`${bytes} bytes did not arrive within 20 s`)), 20_000).unref()
    check()
  })
}

test('two members who cannot hole-punch chat through the root peer; it forwards only ciphertext and counts the bytes', async t => {
  const net = await testnet(t)
  const { rp, relay, metric } = await relaying(t, net)

  // what a chat app sees: the relay's key in the announcement, as the client library offers it
  const app = await client(t, net)
  assert.match(app.announcement!.relay!, /^[0-9a-f]{64}$/)
  assert.ok(app.relayPublicKey!.equals(relay.publicKey))
  assert.ok(!relay.publicKey.equals(rp.publicKey!), 'the relay has a key of its own')

  const { a, b } = await relayedPair(t, net, app.relayPublicKey!)
  // relayed, not direct: both ends send to the same address, the relay's
  assert.equal(a.conn.rawStream.remotePort, b.conn.rawStream.remotePort)
  assert.equal(await metric('root_peer_relay_pairs'), 1)
  assert.equal(await metric('root_peer_relay_connections'), 2)

  const lines = Array.from({ length: 200 }, (_, i) => `${SECRET} #${i}`)
  const total = Buffer.byteLength(lines.join(''))
  b.conn.on('data', (data: Buffer) => b.conn.write(data))
  for (const line of lines) a.conn.write(line)
  await received(a, total)
  assert.equal(Buffer.concat(b.received).toString(), lines.join(''))
  assert.equal(Buffer.concat(a.received).toString(), lines.join(''))

  const forwarded = Buffer.concat([...a.sent, ...b.sent])
  assert.ok(forwarded.length > 2 * total, `${forwarded.length} bytes on the wire for ${total} bytes of chat, twice`)
  assert.equal(forwarded.indexOf(SECRET), -1, 'no plaintext in what the members sent the relay')
  assert.equal(forwarded.indexOf('old bridge'), -1)

  // the relay's streams are read when they close: every byte forwarded is counted by then
  const closed = next(relay, 'pair-closed')
  a.conn.destroy()
  await closed
  const bytes = await metric('root_peer_relay_bytes_total')
  assert.ok(bytes >= forwarded.length, `root_peer_relay_bytes_total ${bytes} >= ${forwarded.length} bytes the members sent`)
  assert.equal(await metric('root_peer_relay_pairs_total'), 1)
  assert.equal(await metric('root_peer_relay_pairs'), 0)
  console.log(`relayed ${total * 2} bytes of chat as ${forwarded.length} bytes; the relay counted ${bytes}`)
})

test('a pair over RELAY_MAX_PAIRS is refused at the handshake and counted; the pair already relayed keeps working', async t => {
  const net = await testnet(t)
  const { relay, metric } = await relaying(t, net, { relayMaxPairs: 1 })
  const { a, b } = await relayedPair(t, net, relay.publicKey)

  const refused = next(relay, 'refused')
  const third: any = node(t, net).connect(b.conn.publicKey, { relayThrough: relay.publicKey, localConnection: false })
  third.on('error', () => {})
  // each end of a relayed connection has a relay connection of its own: a third is over 2 x RELAY_MAX_PAIRS
  assert.deepEqual(await refused, ['connections'])
  assert.ok(await metric('root_peer_relay_refusals_total', { reason: 'connections' }) >= 1)
  assert.equal(await metric('root_peer_relay_pairs'), 1)
  assert.equal(await metric('root_peer_relay_pairs_total'), 1)
  assert.ok(relay.requests <= 2)

  b.conn.on('data', (data: Buffer) => b.conn.write(data))
  a.conn.write('still here')
  await received(a, 'still here'.length)
})

test('bytes over a pair\'s budget, or over the relay\'s, close the pair, counted by reason', async t => {
  const net = await testnet(t)
  // only the budget under test is finite: 1 MiB read at once (a busy machine reads late) would also overdraw
  // the default pair budget's 1.25 MiB by the next reading, and that check comes first
  const unlimited = { relayPairBytesPerSecond: 0, relayPeerBytesPerSecond: 0, relayHostBytesPerSecond: 0, relayBytesPerSecond: 0 }
  for (const [limits, reason] of [[{ relayPairBytesPerSecond: 16 * 1024 }, 'pair-bytes'], [{ relayBytesPerSecond: 16 * 1024 }, 'bytes']] as const) {
    const { relay, metric } = await relaying(t, net, { ...unlimited, ...limits })
    const { a } = await relayedPair(t, net, relay.publicKey)
    const refused = next(relay, 'refused')
    const closed = next(relay, 'pair-closed')
    // 10 s of burst is 160 KiB: 1 MiB is well over it
    for (let i = 0; i < 64; i++) a.conn.write(Buffer.alloc(16 * 1024, i))
    assert.deepEqual(await refused, [reason])
    await closed
    assert.equal(await metric('root_peer_relay_refusals_total', { reason }), 1)
    assert.equal(await metric('root_peer_relay_pairs'), 0)
    // a pair is closed once what it moved in its last reading would overdraw the budget by the next one,
    // so after more than half the burst (80 KiB) and, if that reading came late, after all of it
    const bytes = await metric('root_peer_relay_bytes_total')
    console.log(`${reason}: the pair was closed after relaying ${(bytes / 1024).toFixed(0)} KiB of 1 MiB, against a burst of 160 KiB`)
    assert.ok(bytes > 80 * 1024, `${bytes} bytes relayed before the pair was closed`)
  }
})

test('RELAY=false: no relay key in the announcement, and the relay\'s key answers no connection', async t => {
  const net = await testnet(t)
  const storageDir = await tmpDir(t)
  const first = await rootPeer(t, net, { storageDir })
  const relayKey = first.relay!.publicKey
  await first.close()

  const rp = await rootPeer(t, net, { storageDir, relay: false })
  assert.equal(rp.relay, null)
  const peer = new RawPeer(net)
  teardown(t, () => peer.close())
  await peer.connect()
  const announcement = await peer.nextOfType('root-peer-announcement')
  assert.equal(announcement.publicKey, rp.publicKey!.toString('hex'))
  assert.equal('relay' in announcement, false)
  const app = await client(t, net)
  assert.equal(app.relayPublicKey, null)

  const dialed: any = node(t, net).connect(relayKey)
  dialed.on('open', () => assert.fail('a connection to the relay key opened with RELAY=false'))
  const [err] = await next(dialed, 'error')
  assert.ok(err instanceof Error)
})

/** A relay on a node of its own, closed after the test. */
async function standalone (t: Ctx, net: Testnet, limits: Partial<RelayLimits> & { pairingTimeout?: number }): Promise<Relay> {
  const relay = new Relay({ dht: node(t, net), keyPair: HyperDHT.keyPair(), maxPairs: 256, maxPairsPerPeer: 16, maxPairsPerHost: 256, pairBytesPerSecond: 0, peerBytesPerSecond: 0, hostBytesPerSecond: 0, bytesPerSecond: 0, emptyPairTimeout: 0, ...limits })
  await relay.ready()
  teardown(t, () => relay.close())
  await relay.flushed()
  return relay
}

/** A stranger's connection to the relay under a key of its own, speaking blind-relay directly. */
async function stranger (t: Ctx, dht: HyperDHT, relay: Relay): Promise<{ socket: any, client: RelayClient, pair: () => void }> {
  const keyPair = HyperDHT.keyPair()
  const socket: any = dht.connect(relay.publicKey, { keyPair })
  socket.on('error', () => {})
  teardown(t, () => socket.destroy())
  await next(socket, 'open')
  const client = BlindRelay.Client.from(socket, { id: keyPair.publicKey })
  client.on('error', () => {})
  const pair = (): void => {
    // a request is sent when its stream is read, as hyperdht reads it
    client.pair(true, BlindRelay.token(), dht.createRawStream()).on('error', () => {}).resume()
  }
  return { socket, client, pair }
}

test('strangers with free keys: connections, pair requests per key and in all, and idle connections are bounded', async t => {
  const net = await testnet(t)
  const relay = await standalone(t, net, { maxPairs: 2, maxPairsPerPeer: 2 })
  const dht = node(t, net)

  // 2 pairs: 4 connections and 4 requests at most
  const strangers = []
  for (let i = 0; i < 4; i++) strangers.push(await stranger(t, dht, relay))
  const fifth: any = dht.connect(relay.publicKey, { keyPair: HyperDHT.keyPair() })
  fifth.on('open', () => assert.fail('a fifth connection was let in'))
  await next(fifth, 'error')
  assert.equal(relay.counters.refusals.connections, 1)
  assert.equal(relay.connections, 4)

  // one key asks for three pairs: the third is over its share, and its connection is closed
  const [greedy, ...others] = strangers
  let refused = next(relay, 'refused')
  greedy.pair()
  greedy.pair()
  greedy.pair()
  assert.deepEqual(await refused, ['peer-pairs'])
  await next(greedy.socket, 'close')
  assert.equal(relay.requests, 0)

  // five requests from three keys for four places: one is refused
  refused = next(relay, 'refused')
  others[0].pair()
  others[0].pair()
  others[1].pair()
  others[1].pair()
  others[2].pair()
  assert.deepEqual(await refused, ['pairs'])
  assert.ok(relay.requests <= 4)
  assert.equal(relay.counters.refusals.pairs, 1)
  assert.equal(relay.counters.pairsOpened, 0)
})

test('a connection that joins no pair within the pairing timeout is closed', async t => {
  const net = await testnet(t)
  const relay = await standalone(t, net, { pairingTimeout: 500 })
  const idle = await stranger(t, node(t, net), relay)
  const refused = next(relay, 'refused')
  assert.deepEqual(await refused, ['idle'])
  await next(idle.socket, 'close')
  assert.equal(relay.counters.refusals.idle, 1)
})
