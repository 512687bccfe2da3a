import assert from 'node:assert/strict'
import { EventEmitter, once } from 'node:events'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import BlindRelay from 'blind-relay'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import { Relay, type RelayLimits, type RelayOptions } from '../src/connection/relay.js'
import { BURST_SECONDS } from '../src/connection/relay-budgets.js'
import { teardown, testnet } from './helpers.js'

type Ctx = Parameters<typeof teardown>[0]

const MiB = 1024 * 1024
const WINDOW = 5000
// bytes are forwarded natively before the relay reads them: what the pairs move in the reading that closes
// them comes on top of rate x time + burst (docs/relay.md). Loopback moves about 30 MB/s through the relay,
// so one 50 ms reading, late by as much again on a busy machine, carries up to 3 MiB
const CLOSING_READING = 3 * MiB

function noop (): void {}

/** A DHT node behind a NAT (see test/relay.test.ts): reached through the relay only. */
function node (t: Ctx, net: Testnet): HyperDHT {
  const dht = new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1', quickFirewall: false })
  teardown(t, () => dht.destroy())
  return dht
}

function next (emitter: EventEmitter, name: string, ms = 20_000): Promise<any[]> {
  return once(emitter, name, { signal: AbortSignal.timeout(ms) }).catch(err => {
    throw err.name === 'AbortError' ? new Error(`no ${name} event within ${ms} ms`) : err
  })
}

const UNLIMITED: RelayLimits = {
  maxPairs: 256,
  maxPairsPerPeer: 16,
  maxPairsPerHost: 256,
  pairBytesPerSecond: 0,
  peerBytesPerSecond: 0,
  hostBytesPerSecond: 0,
  bytesPerSecond: 0,
  emptyPairTimeout: 0
}

/** A relay on a node of its own, closed after the test; every refusal is kept by reason. */
async function relay (t: Ctx, net: Testnet, opts: Partial<RelayOptions>): Promise<{ relay: Relay, refused: string[] }> {
  const r = new Relay({ dht: node(t, net), keyPair: HyperDHT.keyPair(), ...UNLIMITED, ...opts })
  await r.ready()
  teardown(t, () => r.close())
  await r.flushed()
  const refused: string[] = []
  r.on('refused', reason => refused.push(reason))
  return { relay: r, refused }
}

/** Writes `conn` full for as long as it is open and writable. */
function pump (conn: any): void {
  const chunk = Buffer.alloc(16 * 1024, 7)
  const fill = (): void => {
    while (!conn.destroyed && conn.write(chunk));
  }
  conn.on('drain', fill)
  fill()
}

/** Resolves when `conn` closes, or once its raw writes have not moved for 300 ms (its pair closed at the relay). */
async function stalled (conn: any, until: number): Promise<void> {
  let last = -1
  let still = 0
  while (!conn.destroyed && Date.now() < until && still < 3) {
    await sleep(100)
    const now = conn.rawBytesWritten + conn.rawBytesRead
    still = now === last ? still + 1 : 0
    last = now
  }
}

interface Flood { bytes: number, received: number, seconds: number, tries: number, opened: number, refusedTries: number }

/**
 * An attacker with two nodes pairing through `relay` again and again, each time with a fresh token (a new
 * relayed connection), `workers` dials at a time, pushing bytes as fast as the loopback takes them; a dial not
 * open within a second is given up, and a connection whose writes stall (its pair closed) is dropped and
 * dialed again. `freshKeys`: the dialing node takes a new key pair for each dial.
 */
async function flood (t: Ctx, net: Testnet, r: Relay, opts: { freshKeys: boolean, bothSend: boolean, workers: number }): Promise<Flood> {
  const dialer = node(t, net)
  const listener = node(t, net)
  let received = 0
  const conns = new Set<any>()
  const server = listener.createServer({ holepunch: false, shareLocalAddress: false, relayThrough: r.publicKey }, (conn: any) => {
    conn.on('error', noop)
    conns.add(conn)
    conn.on('data', (data: Buffer) => { received += data.length })
    if (opts.bothSend) pump(conn)
  })
  await server.listen()
  let refusedTries = 0
  r.on('pair-refused', () => refusedTries++)
  const start = Date.now()
  const end = start + WINDOW
  let tries = 0
  let opened = 0
  const worker = async (): Promise<void> => {
    while (Date.now() < end) {
      tries++
      if (opts.freshKeys) (dialer as any).defaultKeyPair = HyperDHT.keyPair()
      const conn: any = dialer.connect(server.publicKey!, { relayThrough: r.publicKey, localConnection: false })
      conns.add(conn)
      conn.on('error', noop)
      conn.on('data', (data: Buffer) => { received += data.length })
      const open = await new Promise<boolean>(resolve => {
        conn.once('open', () => resolve(true))
        conn.once('close', () => resolve(false))
        setTimeout(resolve, 1000, false)
      })
      if (open) {
        opened++
        pump(conn)
        await stalled(conn, end)
      }
      conn.destroy()
    }
  }
  await Promise.all(Array.from({ length: opts.workers }, worker))
  for (const conn of conns) conn.destroy()
  while (r.pairsOpen > 0) await next(r, 'pair-closed')
  await server.close()
  return { bytes: r.counters.bytes, received, seconds: (Date.now() - start) / 1000, tries, opened, refusedTries }
}

function report (what: string, f: Flood, bound: number): void {
  console.log(`${what}: relayed ${(f.bytes / MiB).toFixed(2)} MiB in ${f.seconds.toFixed(2)} s (${(f.bytes / MiB / f.seconds).toFixed(2)} MiB/s) ` +
    `against a bound of ${(bound / MiB).toFixed(2)} MiB; ${f.opened} pairs of ${f.tries} tries, ${f.refusedTries} pair requests refused; ${(f.received / MiB).toFixed(2)} MiB arrived`)
}

test('RELAY_RATE_BYTES holds against fresh pairs and fresh keys: rate x window + burst in all, new pairs refused while in debt', async t => {
  const net = await testnet(t)
  const rate = MiB
  const { relay: r, refused } = await relay(t, net, { bytesPerSecond: rate })
  const f = await flood(t, net, r, { freshKeys: true, bothSend: true, workers: 3 })
  const bound = rate * f.seconds + rate * BURST_SECONDS + CLOSING_READING
  report('RELAY_RATE_BYTES=1MiB, two nodes re-pairing with fresh keys', f, bound)
  assert.ok(f.bytes <= bound, `${f.bytes} bytes relayed > ${bound}`)
  assert.ok(f.received <= f.bytes, 'every byte that arrived was counted')
  assert.ok(f.bytes > rate * BURST_SECONDS, 'the flood used the burst at least')
  assert.ok(f.refusedTries > 0, 'new pairs refused while the relay is in debt')
  assert.deepEqual(new Set(refused), new Set(['bytes']))
})

test('RELAY_RATE_PEER_BYTES: one key\'s budget is carried across its pairs, and the key is refused new pairs while in debt', async t => {
  const net = await testnet(t)
  const rate = 256 * 1024
  const { relay: r, refused } = await relay(t, net, { peerBytesPerSecond: rate })
  const f = await flood(t, net, r, { freshKeys: false, bothSend: true, workers: 1 })
  // two keys, each with its own budget
  const bound = 2 * (rate * f.seconds + rate * BURST_SECONDS) + CLOSING_READING
  report('RELAY_RATE_PEER_BYTES=256KiB, two keys re-pairing', f, bound)
  assert.ok(f.bytes <= bound, `${f.bytes} bytes relayed > ${bound}`)
  assert.ok(f.refusedTries > 0, 'the key was refused new pairs while in debt')
  const byReason = refused.filter(r => r === 'peer-bytes').length
  assert.ok(byReason > f.refusedTries, `${byReason} peer-bytes refusals: ${f.refusedTries} new pairs and at least one pair closed`)
  assert.deepEqual(new Set(refused), new Set(['peer-bytes']))
})

test('RELAY_RATE_HOST_BYTES: fresh keys on one address share its budget and its debt', async t => {
  const net = await testnet(t)
  const rate = 256 * 1024
  const { relay: r, refused } = await relay(t, net, { hostBytesPerSecond: rate })
  const f = await flood(t, net, r, { freshKeys: true, bothSend: true, workers: 3 })
  const bound = rate * f.seconds + rate * BURST_SECONDS + CLOSING_READING
  report('RELAY_RATE_HOST_BYTES=256KiB, fresh keys from 127.0.0.1', f, bound)
  assert.ok(f.bytes <= bound, `${f.bytes} bytes relayed > ${bound}`)
  assert.ok(f.refusedTries > 0, 'fresh keys on the address were refused new pairs while it is in debt')
  assert.deepEqual(new Set(refused), new Set(['host-bytes']))
  assert.ok(r.remembered.hosts === 1 && r.remembered.keys === 0)
})

const SQUATTER_HOST = '198.51.100.7'

interface Squat { connections: number, requests: number, tokens: Set<string>, stop: () => void }

/**
 * Keys on one address taking relay pairs and sending nothing: `couples` couples of fresh keys, each asking
 * for `pairs` pairs between its two keys, on raw streams never connected. A pair the relay closes is asked for
 * again at once with a fresh token (taken from the relay's event: an attacker that loses no time), and a couple
 * whose connection is closed comes back with two fresh keys 200 ms later. `keys` collects the attackers' keys,
 * so the relay's hostOf can count them under one address.
 */
function squat (t: Ctx, net: Testnet, r: Relay, keys: Set<string>, opts: { couples: number, pairs: number }): Squat {
  const dht = node(t, net)
  let running = true
  const squat: Squat = { connections: 0, requests: 0, tokens: new Set(), stop: () => { running = false } }
  teardown(t, squat.stop)
  const again = new Map<string, () => void>()
  r.on('pair-closed', (token: string) => again.get(token)?.())

  const open = async (): Promise<any> => {
    const keyPair = HyperDHT.keyPair()
    keys.add(keyPair.publicKey.toString('hex'))
    squat.connections++
    const socket: any = dht.connect(r.publicKey, { keyPair })
    socket.on('error', noop)
    const opened = await new Promise<boolean>(resolve => {
      socket.once('open', () => resolve(true))
      socket.once('close', () => resolve(false))
    })
    // the relay closes a connection over the address's share as soon as it is up
    return opened && !socket.destroyed ? socket : null
  }

  const couple = async (): Promise<void> => {
    if (!running) return
    const sockets = await Promise.all([open(), open()])
    let alive = true
    const streams: any[] = []
    const end = (): void => {
      if (!alive) return
      alive = false
      for (const s of sockets) s?.destroy()
      for (const s of streams) s.destroy()
      if (running) setTimeout(() => { couple().catch(noop) }, 200)
    }
    if (sockets.includes(null) || !running) {
      end()
      return
    }
    const clients = sockets.map(s => BlindRelay.Client.from(s, { id: s.publicKey }))
    for (const c of clients) c.on('error', noop)
    const pairOnce = (): void => {
      if (!running || !alive) return
      const token = BlindRelay.token()
      squat.tokens.add(token.toString('hex'))
      again.set(token.toString('hex'), pairOnce)
      clients.forEach((c, i) => {
        const stream = dht.createRawStream()
        streams.push(stream)
        squat.requests++
        // a channel the relay has closed throws; the couple's close comes next
        try { c.pair(i === 0, token, stream).on('error', noop).resume() } catch {}
      })
    }
    for (const s of sockets) s.once('close', end)
    for (let i = 0; i < opts.pairs; i++) pairOnce()
  }

  for (let i = 0; i < opts.couples; i++) couple().catch(noop)
  return squat
}

/** Two members that can only meet through the relay, as in test/relay.test.ts: B listens with hole punching off. */
async function members (t: Ctx, net: Testnet, relayKey: Buffer): Promise<{ a: any, b: any }> {
  let accepted: (conn: any) => void = noop
  const bSide = new Promise<any>(resolve => { accepted = resolve })
  const server = node(t, net).createServer({ holepunch: false, shareLocalAddress: false, relayThrough: relayKey }, (conn: any) => {
    conn.on('error', noop)
    accepted(conn)
  })
  await server.listen()
  const a: any = node(t, net).connect(server.publicKey!, { relayThrough: relayKey, localConnection: false })
  a.on('error', noop)
  await next(a, 'open')
  return { a, b: await bSide }
}

function arrives (conn: any, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = ''
    const ondata = (data: Buffer): void => {
      got += data.toString()
      if (!got.includes(text)) return
      conn.off('data', ondata)
      resolve()
    }
    conn.on('data', ondata)
    conn.once('close', () => reject(new Error(`closed before '${text}' arrived`)))
    setTimeout(() => reject(new Error(`'${text}' did not arrive within 20 s`)), 20_000).unref()
  })
}

/** Resolves when `ready()` holds, checked at each of the relay's events. */
async function until (r: Relay, ready: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  while (!ready()) {
    const left = deadline - Date.now()
    if (left <= 0) throw new Error(`not done within ${ms} ms`)
    const done = new AbortController()
    await Promise.race(['pair-opened', 'pair-closed', 'refused'].map(name => once(r, name, { signal: done.signal }))
      .concat(sleep(left, [], { signal: done.signal }))).finally(() => done.abort())
  }
}

test('RELAY_MAX_PAIRS_PER_HOST and RELAY_EMPTY_PAIR_TIMEOUT: 32 keys on one address holding pairs that move nothing get its share and give their places back; members still pair', async t => {
  const net = await testnet(t)
  const perHost = 4
  const share = 2 * perHost
  const emptyTimeout = 1500
  const maxPairs = 32
  const squatters = new Set<string>()
  const limits = { maxPairs, maxPairsPerHost: perHost, emptyPairTimeout: emptyTimeout }
  const { relay: r, refused } = await relay(t, net, {
    ...limits,
    // on loopback every node is 127.0.0.1: the attackers' keys are counted under an address of their own
    hostOf: socket => squatters.has(socket.remotePublicKey.toString('hex')) ? SQUATTER_HOST : (socket.rawStream?.remoteHost ?? null)
  })
  let peak = { connections: 0, requests: 0 }
  const sample = (): void => {
    const load = r.hostLoad(SQUATTER_HOST)
    peak = { connections: Math.max(peak.connections, load.connections), requests: Math.max(peak.requests, load.requests) }
  }
  const sampler = setInterval(sample, 5)
  teardown(t, () => clearInterval(sampler))
  for (const name of ['pair-opened', 'pair-closed', 'refused']) r.on(name, sample)
  const opened = new Map<string, number>()
  const lifetimes = new Map<string, number>()
  r.on('pair-opened', (token: string) => opened.set(token, Date.now()))
  let lastSquat = 0
  r.on('pair-opened', (token: string) => { if (attack.tokens.has(token)) lastSquat = Date.now() })
  r.on('pair-closed', (token: string) => lifetimes.set(token, Date.now() - opened.get(token)!))
  const count = (reason: string): number => refused.filter(r => r === reason).length

  // 16 couples x 2 pairs: 64 requests from 32 keys, every place of a relay of 32 pairs
  const start = Date.now()
  const attack = squat(t, net, r, squatters, { couples: 16, pairs: 2 })
  // all the places the relay lets one address hold: its share, or every place without one
  const most = 2 * Math.min(limits.maxPairsPerHost, limits.maxPairs)
  await until(r, () => r.hostLoad(SQUATTER_HOST).requests >= most, 10_000)
  const took = Date.now() - start

  // two members who need the relay pair through it during the attack; only A sends, B's app stays silent
  const memberStart = Date.now()
  const { a, b } = await members(t, net, r.publicKey)
  const memberOpen = Date.now() - memberStart
  const memberToken = [...opened.keys()].find(token => !attack.tokens.has(token))
  assert.ok(memberToken !== undefined, 'the members\' pair is one of the relay\'s')
  a.write('hello through the relay')
  await arrives(b, 'hello through the relay')

  // the squatters' pairs are closed as empty and taken again, the one-sided members' pair is not
  const emptyBefore = count('empty')
  await until(r, () => count('empty') >= emptyBefore + share / 2 && Date.now() - memberStart > 2 * emptyTimeout, 10_000)
  assert.ok(!lifetimes.has(memberToken) && !a.destroyed && !b.destroyed, 'the members\' pair is still open')
  b.on('data', (data: Buffer) => b.write(data))
  a.write('still here')
  await arrives(a, 'still here')

  // once it holds its share again, the attack stops asking but keeps its connections: its places come back
  // within the timeout of its last pairs
  await until(r, () => r.hostLoad(SQUATTER_HOST).requests >= share, 10_000)
  attack.stop()
  const stopped = Date.now()
  await until(r, () => r.hostLoad(SQUATTER_HOST).requests === 0, emptyTimeout + 5000)
  const givenBack = Date.now() - lastSquat
  const afterStop = Date.now() - stopped
  const left = r.hostLoad(SQUATTER_HOST)
  clearInterval(sampler)

  const counts: Record<string, number> = {}
  for (const reason of refused) counts[reason] = (counts[reason] ?? 0) + 1
  const longest = Math.max(...lifetimes.values())
  console.log(`32 keys on one address, then fresh ones, for ${stopped - start} ms (${attack.connections} connections, ${attack.requests} pair requests): ` +
    `held at most ${peak.requests} requests and ${peak.connections} connections (its share: ${share} each), reached in ${took} ms; ` +
    `refusals ${JSON.stringify(counts)}; the members' relayed connection opened in ${memberOpen} ms during the attack; ` +
    `${lifetimes.size} pairs closed, the longest after ${longest} ms (RELAY_EMPTY_PAIR_TIMEOUT ${emptyTimeout} ms); ` +
    `once the attack stopped its places were all given back ${afterStop} ms later, ${givenBack} ms after its last pair opened, ${left.connections} of its connections still open`)

  assert.ok(peak.requests <= share, `${peak.requests} pair requests held from one address > ${share}`)
  assert.ok(peak.connections <= share, `${peak.connections} relay connections from one address > ${share}`)
  assert.ok((counts['host-connections'] ?? 0) > 0, 'keys over the address\'s share of connections are refused')
  assert.ok((counts['host-pairs'] ?? 0) > 0, 'requests over the address\'s share of pairs are refused')
  assert.ok((counts.empty ?? 0) >= share / 2, 'pairs that moved nothing are closed as empty')
  assert.deepEqual(Object.keys(counts).filter(reason => !['host-connections', 'host-pairs', 'empty'].includes(reason)), [])
  assert.ok(longest <= emptyTimeout + 1000, `a pair that moved nothing lived ${longest} ms`)
  assert.ok(givenBack <= emptyTimeout + 1000, `places given back ${givenBack} ms after the attack's last pair opened`)
  assert.equal(r.pairsOpen, 1, 'only the members\' pair is left')
  assert.ok(!lifetimes.has(memberToken) && !a.destroyed, 'the members\' pair outlived the attack')
})

test('a key the root peer banned: refused at the relay\'s handshake, and its open relay connection closed when it is banned', async t => {
  const net = await testnet(t)
  const banned = new Set<string>()
  const { relay: r, refused } = await relay(t, net, { isBanned: key => banned.has(key) })
  const dht = node(t, net)
  const connect = async (keyPair: { publicKey: Buffer, secretKey: Buffer }): Promise<{ socket: any, opened: boolean }> => {
    const socket: any = dht.connect(r.publicKey, { keyPair })
    socket.on('error', noop)
    const opened = await new Promise<boolean>(resolve => {
      socket.once('open', () => resolve(true))
      socket.once('close', () => resolve(false))
    })
    return { socket, opened }
  }

  // a connected key, banned while it holds its relay connection: the connection is closed
  const member = HyperDHT.keyPair()
  const seen = next(r, 'member-connected')
  const held = await connect(member)
  assert.equal(held.opened, true)
  assert.deepEqual(await seen, [member.publicKey.toString('hex')])
  banned.add(member.publicKey.toString('hex'))
  // not events.once: the reset comes as an 'error' before the close
  const closed = new Promise(resolve => held.socket.once('close', resolve))
  r.ban(member.publicKey.toString('hex'))
  await closed

  // and it is refused at the handshake from then on, while another key is served
  const again = await connect(member)
  assert.equal(again.opened, false, 'a banned key gets no relay connection')
  const other = await connect(HyperDHT.keyPair())
  assert.equal(other.opened, true, 'another key is served')
  assert.deepEqual(refused.filter(reason => reason === 'banned').length, 2, JSON.stringify(refused))
  console.log(`banned key: its relay connection closed, then refused at the handshake (refusals ${JSON.stringify(refused)}); another key served`)
})
