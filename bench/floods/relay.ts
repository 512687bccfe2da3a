// Issue 22, items 4 and 5: the root peer's blind relay, spoken directly as a stranger would (blind-relay's client on a
// connection to the relay's key from the announcement): two keys re-pairing to push bytes, and 32 keys holding pairs.
// The strangers' DHT node is bound to 127.0.0.2 and the members' to 127.0.0.1: two addresses, all on loopback.
import { once } from 'node:events'
import BlindRelay from 'blind-relay'
import HyperDHT from 'hyperdht'
import { sleep } from '../harness.js'
import { metric, mb, type AttackContext, type Bootstrap, type Scenario, type Stage } from './common.js'

const STRANGERS_HOST = '127.0.0.2'
const CHUNK = Buffer.alloc(64 * 1024, 0x2a)
const HOLD_KEYS = 32
// RELAY_MAX_PAIRS_PER_PEER by default: each key's share of requests
const PAIRS_PER_KEY = 16
const RELAY_RATE_BYTES = 2 * 1024 * 1024

type KeyPair = { publicKey: Buffer, secretKey: Buffer }
interface Side { socket: any, client: any }

async function connectSide (dht: HyperDHT, relay: Buffer, keyPair: KeyPair): Promise<Side> {
  const socket: any = dht.connect(relay, { keyPair })
  socket.on('error', () => {})
  await once(socket, 'open')
  const client: any = BlindRelay.Client.from(socket, { id: keyPair.publicKey })
  client.on('error', () => {})
  return { socket, client }
}

/** Pairs one raw stream on each side under a fresh token and connects them through the relay; rejects when refused. */
async function pair (dht: HyperDHT, sides: Side[]): Promise<any[]> {
  const token = BlindRelay.token()
  const streams = sides.map(() => {
    const s: any = dht.createRawStream()
    s.on('error', () => {})
    return s
  })
  try {
    const ids = await Promise.all(sides.map((side, i) => new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('pairing timed out')), 5000)
      side.client.pair(i === 0, token, streams[i])
        .on('error', (err: Error) => { clearTimeout(timer); reject(err) })
        .on('data', (id: number) => { clearTimeout(timer); resolve(id) })
    })))
    streams.forEach((s, i) => {
      const raw = sides[i].socket.rawStream
      s.connect(raw.socket, ids[i], raw.remotePort, raw.remoteHost)
    })
    return streams
  } catch (err) {
    for (const s of streams) s.destroy()
    throw err
  }
}

function closed (side: Side): boolean {
  return side.socket.destroyed === true || side.client.closed === true
}

async function bytesFlood ({ bootstrap, relay }: AttackContext): Promise<{ tallies: () => unknown, stop: () => Promise<void> }> {
  if (relay === null) throw new Error('the root peer announced no relay')
  const dht = new HyperDHT({ bootstrap, host: STRANGERS_HOST })
  const keys = [HyperDHT.keyPair(), HyperDHT.keyPair()]
  const t = { relayConnections: 0, pairs: 0, refused: 0, bytes: 0, maxPairBytes: 0, elapsedMs: 0 }
  let running = true
  let sides: Side[] | null = null
  let started = (): void => {}
  const firstPair = new Promise<void>(resolve => { started = resolve })
  const t0 = performance.now()
  const loop = (async () => {
    while (running) {
      if (sides === null || sides.some(closed)) {
        for (const s of sides ?? []) s.socket.destroy()
        sides = await Promise.all(keys.map(k => connectSide(dht, relay, k))).catch(() => null)
        if (sides === null) { await sleep(200); continue }
        t.relayConnections += 2
      }
      let streams: any[]
      try {
        streams = await pair(dht, sides)
      } catch {
        t.refused++
        await sleep(100)
        continue
      }
      t.pairs++
      started()
      // both ways as fast as the streams take it, until nothing arrives for a second (the relay closed the pair)
      let pairBytes = 0
      let last = performance.now()
      for (const s of streams) {
        s.on('data', (d: Buffer) => { pairBytes += d.length; t.bytes += d.length; last = performance.now() })
        const push = (): void => { while (running && !s.destroyed && s.write(CHUNK)); }
        s.on('drain', push)
        push()
      }
      while (running && performance.now() - last < 1000 && !streams.some(s => s.destroyed)) await sleep(100)
      for (const s of streams) s.destroy()
      t.maxPairBytes = Math.max(t.maxPairBytes, pairBytes)
    }
  })()
  await Promise.race([firstPair, sleep(10_000)])
  return {
    tallies: () => ({ ...t, elapsedMs: Math.round(performance.now() - t0) }),
    stop: async () => {
      running = false
      await loop
      await dht.destroy({ force: true })
    }
  }
}

/**
 * Two members that can meet only through the relay (as test/relay.test.ts's): fresh DHT nodes for each try, since a
 * node that has run a while may find it is not firewalled on loopback and connect directly. 'relayed' only when both
 * ends talk to the same address, the relay's.
 */
async function memberTry (bootstrap: Bootstrap, relay: Buffer): Promise<'relayed' | 'direct' | 'failed'> {
  const nodes = [0, 1].map(() => new HyperDHT({ bootstrap, host: '127.0.0.1', quickFirewall: false }))
  try {
    let accepted: (conn: any) => void = () => {}
    const serverSide = new Promise<any>(resolve => { accepted = resolve })
    const server = nodes[0].createServer({ holepunch: false, shareLocalAddress: false, relayThrough: relay }, conn => {
      conn.on('error', () => {})
      accepted(conn)
    })
    await server.listen()
    const conn: any = nodes[1].connect(server.publicKey!, { relayThrough: relay, localConnection: false })
    conn.on('error', () => {})
    const opened = await new Promise<boolean>(resolve => {
      const timer = setTimeout(() => resolve(false), 20_000)
      conn.once('open', () => { clearTimeout(timer); resolve(true) })
      conn.once('close', () => { clearTimeout(timer); resolve(false) })
    })
    if (!opened) return 'failed'
    const other = await Promise.race([serverSide, sleep(5000).then(() => null)])
    const relayed = other !== null && other.rawStream.remotePort === conn.rawStream.remotePort
    conn.destroy()
    return relayed ? 'relayed' : 'direct'
  } finally {
    await Promise.all(nodes.map(n => n.destroy({ force: true })))
  }
}

function tries (): Record<'relayed' | 'direct' | 'failed', number> {
  return { relayed: 0, direct: 0, failed: 0 }
}

async function holdFlood ({ bootstrap, relay }: AttackContext): Promise<{ tallies: () => unknown, stop: () => Promise<void> }> {
  if (relay === null) throw new Error('the root peer announced no relay')
  const t = { keys: 0, pairsHeld: 0, refused: 0, lostConnections: 0, membersBefore: tries(), members: tries() }
  // the members can meet through the relay before the hold
  for (let i = 0; i < 2; i++) t.membersBefore[await memberTry(bootstrap, relay)]++
  const dht = new HyperDHT({ bootstrap, host: STRANGERS_HOST })
  let running = true
  const everything: any[] = []
  // two keys share PAIRS_PER_KEY tokens, and send nothing on the streams; a couple the relay drops comes back with fresh keys
  const couple = async (): Promise<void> => {
    if (!running) return
    const sides = await Promise.all([0, 1].map(() => connectSide(dht, relay, HyperDHT.keyPair()))).catch(() => null)
    if (sides === null) return
    t.keys += 2
    everything.push(...sides.map(s => s.socket))
    let lost = false
    for (const s of sides) {
      s.socket.once('close', () => {
        if (lost || !running) return
        lost = true
        t.lostConnections++
        for (const o of sides) o.socket.destroy()
        setTimeout(() => { couple().catch(() => {}) }, 100)
      })
    }
    await Promise.all(Array.from({ length: PAIRS_PER_KEY }, async () => {
      try {
        everything.push(...await pair(dht, sides))
        t.pairsHeld++
      } catch {
        t.refused++
      }
    }))
  }
  await Promise.all(Array.from({ length: HOLD_KEYS / 2 }, couple))
  const loop = (async () => {
    while (running) {
      const result = await memberTry(bootstrap, relay)
      if (running) t.members[result]++
    }
  })()
  return {
    tallies: () => t,
    stop: async () => {
      running = false
      for (const s of everything) s.destroy()
      await loop
      await dht.destroy({ force: true })
    }
  }
}

interface RelayFigures { bytes: number, refusals: Record<string, number> }

async function relayMetrics (stage: Stage): Promise<RelayFigures> {
  const refusals: Record<string, number> = {}
  for (const reason of ['connections', 'pairs', 'peer-pairs', 'pair-bytes', 'bytes', 'idle']) refusals[reason] = await metric(stage.monitorUrl, 'root_peer_relay_refusals_total', { reason })
  return { bytes: await metric(stage.monitorUrl, 'root_peer_relay_bytes_total'), refusals }
}

function refusalsSince (now: RelayFigures, before: RelayFigures): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [k, v] of Object.entries(now.refusals)) if (v - (before.refusals[k] ?? 0) > 0) out[k] = v - (before.refusals[k] ?? 0)
  return out
}

export const relayBytes: Scenario = {
  title: 'two keys pairing with each other through the relay, pushing bytes both ways, re-pairing with a fresh token whenever a pair stops',
  before: async stage => ({ relay: await relayMetrics(stage) }),
  attack: bytesFlood,
  async after (stage, t, m) {
    const now = await relayMetrics(stage)
    const before = m.before.relay as RelayFigures
    const seconds = t.elapsedMs / 1000
    return {
      relayedMB: mb(now.bytes - before.bytes),
      receivedMB: mb(t.bytes),
      mbPerSecond: Math.round(t.bytes / seconds / 1024 / 1024 * 10) / 10,
      ofRelayRate: Math.round(t.bytes / seconds / RELAY_RATE_BYTES * 10) / 10,
      boundMB: mb(RELAY_RATE_BYTES * (seconds + 10)),
      pairs: t.pairs,
      maxPairMB: mb(t.maxPairBytes),
      refusals: refusalsSince(now, before)
    }
  },
  describe: (f: any, t) => `${f.pairs} pairs (${t.refused} refused) moved ${f.receivedMB} MB in ${Math.round(t.elapsedMs / 1000)} s, ${f.mbPerSecond} MB/s = ${f.ofRelayRate}x RELAY_RATE_BYTES (its bound with the burst: ${f.boundMB} MB); up to ${f.maxPairMB} MB a pair; the relay counted ${f.relayedMB} MB; refusals ${JSON.stringify(f.refusals)}`
}

export const relayHold: Scenario = {
  title: `${HOLD_KEYS} keys on one address taking ${PAIRS_PER_KEY} relay pairs each and moving nothing, while two members dial each other through the relay`,
  before: async stage => ({ relay: await relayMetrics(stage) }),
  attack: holdFlood,
  during: async stage => ({ pairsOpen: await metric(stage.monitorUrl, 'root_peer_relay_pairs') }),
  after: async (stage, t, m) => ({ refusals: refusalsSince(await relayMetrics(stage), m.before.relay as RelayFigures) }),
  describe: (f: any, t) => `the members' tries before the hold ${JSON.stringify(t.membersBefore)}, during it ${JSON.stringify(t.members)}; the strangers held ${t.pairsHeld} pairs with ${t.keys} keys (${t.refused} requests refused, ${t.lostConnections} relay connections lost); pairs open at the end ${f.pairsOpen}; refusals ${JSON.stringify(f.refusals)}`
}
