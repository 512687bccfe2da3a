// npm run bench [-- --clients 4 --messages 5000 --payload 240 --peers 1000 --rooms 10000 --active 1000
//                  --latency-seconds 5 --latency-rate 500 --latency-burst 50 --settle-seconds 15
//                  --skip-sync --skip-latency --skip-live --skip-batched --skip-connections --skip-rooms --skip-reference
//                  --profile DIR (node --cpu-prof on the daemon) --heap-snapshot DIR --daemon-env KEY=VALUE]
// Starts a loopback DHT testnet, then the reference server (bench/reference.ts: the wire alone, rooms in memory)
// and the daemon, each as a child process, drives each over real Hyperswarm connections with the same clients'
// work, measures Hypercore's own limit on the same records in the same run, and prints one JSON line and a table
// with the daemon's figures as ratios to the reference's and Hypercore's. Everything stays on 127.0.0.1; temp dirs and the child are removed at the end.
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import Corestore from 'corestore'
import HyperDHT from 'hyperdht'
import createTestnet, { type Testnet } from 'hyperdht/testnet.js'
import crypto from 'hypercore-crypto'
import { encodeRecord } from '../src/protocol/protocol.js'
import { Client, Daemon, ROOT, benchEnv, build, cleanups, runBench, heapMB, percentile, rate, round2, sleep, stats, tempDir } from './harness.js'

/** Ingest and catch-up are each run this many times, on the reference and the daemon alike; the median is reported. */
const RUNS = 5

interface Options {
  clients: number
  messages: number
  payload: number
  peers: number
  rooms: number
  active: number
  latencySeconds: number
  latencyRate: number
  /** messages sent at once, every latencyBurst / latencyRate seconds */
  latencyBurst: number
  /** seconds to wait after the rooms step before the settled RSS is read */
  settleSeconds: number
  skipConnections: boolean
  skipRooms: boolean
  skipLatency: boolean
  skipSync: boolean
  skipLive: boolean
  skipReference: boolean
  skipBatched: boolean
  profile: string | null
  /** write a heap snapshot of the daemon (a full GC) after the rooms step, into this dir */
  heapSnapshot: string | null
  /** extra environment for the daemon, from --daemon-env KEY=VALUE */
  daemonEnv: Record<string, string>
}

function parseArgs (argv: string[]): Options {
  const o: Options = { clients: 4, messages: 5000, payload: 240, peers: 1000, rooms: 10_000, active: 1000, latencySeconds: 5, latencyRate: 500, latencyBurst: 50, settleSeconds: 15, skipConnections: false, skipRooms: false, skipLatency: false, skipSync: false, skipLive: false, skipReference: false, skipBatched: false, profile: null, heapSnapshot: null, daemonEnv: {} }
  const numeric: Record<string, keyof Options> = { '--clients': 'clients', '--messages': 'messages', '--payload': 'payload', '--peers': 'peers', '--rooms': 'rooms', '--active': 'active', '--latency-seconds': 'latencySeconds', '--latency-rate': 'latencyRate', '--latency-burst': 'latencyBurst', '--settle-seconds': 'settleSeconds' }
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2)
    if (flag === '--skip-connections') o.skipConnections = true
    else if (flag === '--skip-rooms') o.skipRooms = true
    else if (flag === '--skip-latency') o.skipLatency = true
    else if (flag === '--skip-sync') o.skipSync = true
    else if (flag === '--skip-live') o.skipLive = true
    else if (flag === '--skip-reference') o.skipReference = true
    else if (flag === '--skip-batched') o.skipBatched = true
    else if (flag === '--daemon-env') {
      const kv = argv[++i]
      const eq = kv.indexOf('=')
      o.daemonEnv[kv.slice(0, eq)] = kv.slice(eq + 1)
    } else if (flag === '--heap-snapshot') o.heapSnapshot = path.resolve(inline ?? argv[++i])
    else if (flag === '--profile') o.profile = path.resolve(inline ?? argv[++i])
    else if (flag in numeric) {
      const n = Number(inline ?? argv[++i])
      if (!Number.isFinite(n) || n < 0) throw new Error(`${flag}: not a number`)
      ;(o as any)[numeric[flag]] = n
    } else throw new Error(`unknown flag ${argv[i]}`)
  }
  return o
}

/** The records the daemon stores for a message of `payload` bytes, so the limit is measured on the same blocks. */
function records (count: number, payload: number): Buffer[] {
  const peerId = crypto.randomBytes(32).toString('hex')
  const body = 'x'.repeat(payload)
  return Array.from({ length: count }, (_, i) => Buffer.from(encodeRecord({ message: body, storedAt: Date.now(), fromPeer: peerId, senderPublicKey: peerId, id: `id-${i}` }, JSON.stringify(body))))
}

/** Hypercore's own speed on these records: batched appends of 100, then every block read with many gets in flight. */
async function hypercoreLimit (blocks: Buffer[], pacedRate: number): Promise<{ appendPerSecond: number, getPerSecond: number, appendRuns: number[], getRuns: number[], blockBytes: number, singleAppendMs: { p50: number, p99: number } }> {
  const store = new Corestore(await tempDir('root-peer-bench-core-'))
  // RUNS passes, each into a core of its own: the median of each
  const appendRates: number[] = []
  const getRates: number[] = []
  let core: any = null
  for (let run = 0; run < RUNS; run++) {
    core = store.get({ name: `limit-${run}` })
    await core.ready()
    let t0 = performance.now()
    for (let i = 0; i < blocks.length; i += 100) await core.append(blocks.slice(i, i + 100))
    appendRates.push(rate(blocks.length, performance.now() - t0))
    t0 = performance.now()
    for (let i = 0; i < blocks.length; i += 1000) {
      const gets: Array<Promise<Buffer | null>> = []
      for (let j = i; j < Math.min(blocks.length, i + 1000); j++) gets.push(core.get(j))
      await Promise.all(gets)
    }
    getRates.push(rate(blocks.length, performance.now() - t0))
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[RUNS >> 1]
  // one block at a time at the paced rate of the ack latency test: Hypercore's own share of an ack's latency
  const took: number[] = []
  const t0 = performance.now()
  for (let i = 0; i < Math.min(1000, blocks.length); i++) {
    const wait = t0 + i * 1000 / pacedRate - performance.now()
    if (wait > 1) await sleep(wait)
    const s = performance.now()
    await core.append(blocks[i])
    took.push(performance.now() - s)
  }
  took.sort((a, b) => a - b)
  await store.close()
  return {
    appendPerSecond: median(appendRates),
    getPerSecond: median(getRates),
    appendRuns: appendRates,
    getRuns: getRates,
    blockBytes: blocks[0].byteLength,
    singleAppendMs: { p50: round2(percentile(took, 0.5)), p99: round2(percentile(took, 0.99)) }
  }
}

async function ingest (clients: Client[], messages: number, payload: string, run = 0): Promise<{ perSecond: number, ms: number }> {
  const t0 = performance.now()
  await Promise.all(clients.map((c, k) => new Promise<void>((resolve, reject) => {
    let acked = 0
    c.onFrame = f => {
      if (f.type === 'error') reject(new Error(`ingest: ${f.code} ${f.message}`))
      if (f.type === 'message-ack' && ++acked === messages) resolve()
    }
    for (let i = 0; i < messages; i++) c.send({ type: 'message', roomName: run === 0 ? `bench-ingest-${k}` : `bench-ingest-${k}-${run}`, message: payload, id: `c${k}-${run}-${i}` })
  })))
  const ms = performance.now() - t0
  return { perSecond: rate(clients.length * messages, ms), ms: Math.round(ms) }
}

/**
 * RUNS ingest runs into fresh rooms each (the first into the rooms the catch-up step reads): the median, and each
 * run's figure. The first run of a process pays its warm-up (JIT, first allocations), on the daemon and the reference alike.
 */
async function ingestRuns (clients: Client[], messages: number, payload: string): Promise<{ perSecond: number, ms: number, runs: number[] }> {
  const runs = []
  for (let run = 0; run < RUNS; run++) runs.push(await ingest(clients, messages, payload, run))
  const sorted = [...runs].sort((a, b) => a.perSecond - b.perSecond)
  return { ...sorted[RUNS >> 1], runs: runs.map(r => r.perSecond) }
}

/**
 * The same clients' work as `message-batch` frames of the announced `batch.maxMessages`, all in flight at once: messages
 * per second until every batch's ack (each message still stored once by id and acked with its index).
 */
async function ingestBatched (clients: Client[], messages: number, payload: string, run: number): Promise<{ perSecond: number, ms: number, batch: number }> {
  const batch = clients[0].announcement?.batch?.maxMessages as number | undefined
  if (batch === undefined) throw new Error('the root peer offers no message-batch (MAX_BATCH_MESSAGES=0?)')
  const t0 = performance.now()
  await Promise.all(clients.map((c, k) => new Promise<void>((resolve, reject) => {
    let acked = 0
    c.onFrame = f => {
      if (f.type === 'error') reject(new Error(`batched ingest: ${f.code} ${f.message}`))
      if (f.type !== 'message-batch-ack') return
      for (const a of f.acks) if (a.code !== undefined) reject(new Error(`batched ingest: ${a.code} ${a.message}`))
      if ((acked += f.acks.length) === messages) resolve()
    }
    for (let i = 0; i < messages; i += batch) {
      const items = []
      for (let j = i; j < Math.min(messages, i + batch); j++) items.push({ id: `b${k}-${run}-${j}`, message: payload })
      c.send({ type: 'message-batch', roomName: `bench-batch-${k}-${run}`, messages: items, requestId: i })
    }
  })))
  const ms = performance.now() - t0
  return { perSecond: rate(clients.length * messages, ms), ms: Math.round(ms), batch }
}

/** Acks timed from a separate process, the messages sent in bursts of `burst` at `perSecond` on average. */
async function latency (client: Client, seconds: number, perSecond: number, burst: number, payload: string): Promise<{ p50: number, p99: number, max: number, count: number }> {
  const count = Math.round(seconds * perSecond)
  const sentAt = new Array<number>(count)
  const took: number[] = []
  const done = new Promise<void>((resolve, reject) => {
    client.onFrame = f => {
      if (f.type === 'error') reject(new Error(`latency: ${f.code} ${f.message}`))
      if (f.type !== 'message-ack') return
      took.push(performance.now() - sentAt[Number(f.id.slice(1))])
      if (took.length === count) resolve()
    }
  })
  const t0 = performance.now()
  for (let i = 0; i < count; i += burst) {
    // paced against the clock, so a late tick does not slow the rate down
    const due = t0 + i * 1000 / perSecond
    const wait = due - performance.now()
    if (wait > 1) await sleep(wait)
    for (let j = i; j < Math.min(count, i + burst); j++) {
      sentAt[j] = performance.now()
      client.send({ type: 'message', roomName: 'bench-latency', message: payload, id: `l${j}` })
    }
  }
  await done
  took.sort((a, b) => a - b)
  const round = (x: number): number => Math.round(x * 100) / 100
  return { p50: round(percentile(took, 0.5)), p99: round(percentile(took, 0.99)), max: round(took[took.length - 1]), count }
}

/**
 * Live delivery: `follower` follows a room, `writer` sends to it at `perSecond` in bursts of `burst`; the time from
 * each write to the follower's page that carries it, and to the writer's ack, from this process.
 */
async function live (writer: Client, follower: Client, seconds: number, perSecond: number, burst: number, payload: string): Promise<{ deliveryMs: { p50: number, p99: number, max: number }, ackMs: { p50: number, p99: number, max: number }, count: number }> {
  const roomName = 'bench-live'
  const count = Math.round(seconds * perSecond)
  const sentAt = new Array<number>(count)
  const delivered: number[] = []
  const acked: number[] = []
  await new Promise<void>((resolve, reject) => {
    follower.onFrame = f => {
      if (f.type === 'error') reject(new Error(`live: ${f.code} ${f.message}`))
      if (f.type === 'follow-live') resolve()
    }
    follower.send({ type: 'follow', roomName, fromIndex: 0 })
  })
  const done = new Promise<void>((resolve, reject) => {
    const check = (): void => { if (delivered.length === count && acked.length === count) resolve() }
    follower.onFrame = f => {
      if (f.type === 'error') reject(new Error(`live: ${f.code} ${f.message}`))
      if (f.type !== 'follow-messages') return
      const now = performance.now()
      for (const m of f.messages) delivered.push(now - sentAt[Number(m.id.slice(1))])
      check()
    }
    writer.onFrame = f => {
      if (f.type === 'error') reject(new Error(`live: ${f.code} ${f.message}`))
      if (f.type !== 'message-ack') return
      acked.push(performance.now() - sentAt[Number(f.id.slice(1))])
      check()
    }
  })
  const t0 = performance.now()
  for (let i = 0; i < count; i += burst) {
    const wait = t0 + i * 1000 / perSecond - performance.now()
    if (wait > 1) await sleep(wait)
    for (let j = i; j < Math.min(count, i + burst); j++) {
      sentAt[j] = performance.now()
      writer.send({ type: 'message', roomName, message: payload, id: `v${j}` })
    }
  }
  await done
  const sum = (xs: number[]): { p50: number, p99: number, max: number } => {
    xs.sort((a, b) => a - b)
    return { p50: round2(percentile(xs, 0.5)), p99: round2(percentile(xs, 0.99)), max: round2(xs[xs.length - 1]) }
  }
  return { deliveryMs: sum(delivered), ackMs: sum(acked), count }
}

/**
 * The reference server's figures for the wire steps the daemon is measured on, with fresh clients: ingest, catch-up
 * (the median of RUNS), ack latency. Stopped before the daemon starts, so clients find only one server on the topic.
 */
async function reference (net: Testnet, o: Options, payload: string): Promise<Record<string, any>> {
  const server = new Daemon(benchEnv(net), null, path.join(ROOT, 'bench/reference.ts'), ['--import', 'tsx'])
  cleanups.push(() => server.stop())
  await server.line(l => l.msg === 'announced on the discovery topic')
  const clients = Array.from({ length: o.clients }, () => new Client(net))
  await Promise.all(clients.map(c => c.connect()))
  const out: Record<string, any> = {}
  const cpu0 = await server.cpuSeconds()
  const t0 = performance.now()
  const ing = await ingestRuns(clients, o.messages, payload)
  out.ingest = { ...ing, serverCpu: round2((await server.cpuSeconds() - cpu0) / ((performance.now() - t0) / 1000)) }
  if (!o.skipSync) out.sync = await syncMedian(net, o, server)
  const reader = new Client(net)
  await reader.connect()
  if (!o.skipLatency) out.ackLatencyMs = await latency(reader, o.latencySeconds, o.latencyRate, o.latencyBurst, payload)
  await server.stop()
  await Promise.all([...clients, reader].map(c => c.destroy()))
  return out
}

/**
 * Each run, a fresh client catches up every ingest room in turn from index 0 (each room its own catch-up of
 * `messages` messages in pages of 1,000); the median of RUNS runs, and each run's figure.
 */
async function syncMedian (net: Testnet, o: Options, server: Daemon): Promise<Record<string, any>> {
  const syncs = []
  for (let k = 0; k < RUNS; k++) {
    const reader = new Client(net)
    await reader.connect()
    const cpu0 = await server.cpuSeconds()
    const t0 = performance.now()
    let messages = 0
    let pages = 0
    for (let c = 0; c < o.clients; c++) {
      const one = await sync(reader, `bench-ingest-${c}`)
      messages += one.messages
      pages += one.pages
    }
    const ms = performance.now() - t0
    syncs.push({ perSecond: rate(messages, ms), messages, pages, daemonCpu: round2((await server.cpuSeconds() - cpu0) / (ms / 1000)) })
    await reader.destroy()
  }
  const sorted = [...syncs].sort((a, b) => a.perSecond - b.perSecond)
  return { ...sorted[RUNS >> 1], runs: syncs.map(x => x.perSecond) }
}

/** One room's catch-up from index 0, a page of 1,000 at a time, each asked for once the one before arrived. */
async function sync (client: Client, roomName: string): Promise<{ messages: number, pages: number }> {
  let next = 0
  let messages = 0
  let pages = 0
  while (true) {
    const page = await client.request({ type: 'sync-request', roomName, lastIndex: next, limit: 1000 })
    if (page.type !== 'sync-response') throw new Error(`sync: ${page.code}`)
    messages += page.messages.length
    pages++
    next = page.nextIndex
    if (!page.hasMore) break
  }
  return { messages, pages }
}

async function connections (net: Testnet, publicKey: Buffer, count: number): Promise<{ ms: number, announced: number }> {
  const nodes = Array.from({ length: 4 }, () => new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }))
  const conns: any[] = []
  const t0 = performance.now()
  const firsts = await Promise.all(Array.from({ length: count }, (_, i) => new Promise<string>(resolve => {
    const conn = (nodes[i % nodes.length] as any).connect(publicKey, { keyPair: HyperDHT.keyPair() })
    conns.push(conn)
    conn.on('error', () => resolve('error'))
    conn.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()).type))
  })))
  const ms = performance.now() - t0
  for (const c of conns) c.destroy()
  await Promise.all(nodes.map(n => n.destroy()))
  return { ms: Math.round(ms), announced: firsts.filter(x => x === 'root-peer-announcement').length }
}

/**
 * Registers `o.rooms` rooms and writes one message into `o.active` of them, then measures what they cost: memory,
 * disk, the stop, the restart, and the first register-room and message of rooms that slept through it.
 */
async function roomsStep (net: Testnet, o: Options, payload: string): Promise<Record<string, unknown>> {
  const { daemon, monitorUrl, storage } = await startDaemon(net, o)
  const clients = Array.from({ length: o.clients }, () => new Client(net))
  await Promise.all(clients.map(c => c.connect()))
  let t0 = performance.now()
  await registerRooms(clients, o.rooms)
  const registerMs = performance.now() - t0
  t0 = performance.now()
  await activate(clients, o.active, payload)
  const activeMs = performance.now() - t0
  await Promise.all(clients.map(c => c.destroy()))
  await sleep(1000)
  const rssAtOnce = await daemon.rssMB()
  // Corestore closes a core whose last session closed after 4 of its 2 s GC cycles; V8 shrinks its heap when idle
  const settleCpu0 = await daemon.cpuSeconds()
  await sleep(o.settleSeconds * 1000)
  const settleCpu = round2((await daemon.cpuSeconds() - settleCpu0) / o.settleSeconds)
  const s = await stats(monitorUrl)
  if (o.heapSnapshot !== null) await heapSnapshot(daemon, o.heapSnapshot)
  const before = { rssMB: await daemon.rssMB(), heap: await heapMB(monitorUrl), open: s.rooms.open, announced: s.rooms.announced, total: s.rooms.total }
  const stopMs = await daemon.stop()
  const diskBytes = await du(storage)

  // the restart: ready from the index's totals, whatever the number of rooms
  const again = await startDaemon(net, o, storage)
  const counted = await stats(again.monitorUrl)
  await sleep(1000)
  const after = { rssMB: await again.daemon.rssMB(), heap: await heapMB(again.monitorUrl) }
  const slept = await sleptRooms(net, o)
  const afterSlept = { rssMB: await again.daemon.rssMB(), heap: await heapMB(again.monitorUrl) }
  const restartStopMs = await again.daemon.stop()
  return {
    registered: o.rooms,
    active: o.active,
    registerMs: Math.round(registerMs),
    registerPerSecond: rate(o.rooms, registerMs),
    activeMs: Math.round(activeMs),
    rssMBAtOnce: rssAtOnce,
    settleSeconds: o.settleSeconds,
    settleCpu,
    ...before,
    stopMs,
    diskBytesPerRoom: Math.round(diskBytes / o.rooms),
    restartReadyMs: again.readyMs,
    restartCounts: { rooms: counted.totalRooms, messages: counted.totalMessages },
    afterRestart: after,
    slept,
    afterSlept,
    restartStopMs
  }
}

/** Registers rooms `bench-room-0` to `bench-room-<total - 1>`, WINDOW in flight per client. */
async function registerRooms (clients: Client[], total: number): Promise<void> {
  const WINDOW = 256
  await Promise.all(clients.map(async (c, k) => {
    for (let at = k; at < total; at += clients.length * WINDOW) {
      const batch: number[] = []
      for (let r = at; r < Math.min(total, at + clients.length * WINDOW); r += clients.length) batch.push(r)
      await new Promise<void>((resolve, reject) => {
        let answered = 0
        c.onFrame = f => {
          if (f.type === 'error') reject(new Error(`rooms: ${f.code} ${f.message}`))
          if (f.type === 'room-registered' && ++answered === batch.length) resolve()
        }
        for (const r of batch) c.send({ type: 'register-room', roomName: `bench-room-${r}`, requestId: r })
      })
    }
  }))
}

/** One message into each of the first `active` rooms. */
async function activate (clients: Client[], active: number, payload: string): Promise<void> {
  await Promise.all(clients.map((c, k) => new Promise<void>((resolve, reject) => {
    const mine: number[] = []
    for (let r = k; r < active; r += clients.length) mine.push(r)
    let acked = 0
    c.onFrame = f => {
      if (f.type === 'error') reject(new Error(`rooms: ${f.code} ${f.message}`))
      if (f.type === 'message-ack' && ++acked === mine.length) resolve()
    }
    if (mine.length === 0) resolve()
    for (const r of mine) c.send({ type: 'message', roomName: `bench-room-${r}`, message: payload, id: `a${r}` })
  })))
}

/**
 * After the restart, one at a time: a register-room of a room that never had a message, and a message to a room that
 * had one, each slept through the restart; the time to its answer, from this process.
 */
async function sleptRooms (net: Testnet, o: Options): Promise<{ samples: number, registerMs: { p50: number, max: number }, messageMs: { p50: number, max: number } }> {
  const client = new Client(net)
  await client.connect()
  const samples = Math.min(50, o.active, o.rooms - o.active)
  const register: number[] = []
  const message: number[] = []
  const stride = Math.max(1, Math.floor((o.rooms - o.active) / samples))
  for (let i = 0; i < samples; i++) {
    let t0 = performance.now()
    const registered = await client.request({ type: 'register-room', roomName: `bench-room-${o.active + i * stride}`, requestId: i })
    if (registered.type !== 'room-registered') throw new Error(`slept room: ${registered.code}`)
    register.push(performance.now() - t0)
    const roomName = `bench-room-${Math.floor(i * o.active / samples)}`
    t0 = performance.now()
    const acked = await new Promise<any>(resolve => {
      client.onFrame = f => { if (f.type === 'message-ack' || f.type === 'error') resolve(f) }
      client.send({ type: 'message', roomName, message: 'after the restart', id: `slept-${i}` })
    })
    if (acked.type !== 'message-ack' || acked.messageIndex !== 1) throw new Error(`slept room ${roomName}: ${JSON.stringify(acked)}`)
    message.push(performance.now() - t0)
  }
  await client.destroy()
  const sum = (xs: number[]): { p50: number, max: number } => {
    xs.sort((a, b) => a - b)
    return { p50: round2(percentile(xs, 0.5)), max: round2(xs[xs.length - 1]) }
  }
  return { samples, registerMs: sum(register), messageMs: sum(message) }
}

/** A heap snapshot of the daemon (SIGUSR2), complete when its size stops changing. */
async function heapSnapshot (daemon: Daemon, dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true })
  daemon.child.kill('SIGUSR2')
  let last = -1
  while (true) {
    await sleep(1000)
    const files = await fs.readdir(dir)
    const sizes = await Promise.all(files.map(f => fs.stat(path.join(dir, f)).then(st => st.size)))
    const size = sizes.reduce((a, b) => a + b, 0)
    if (size > 0 && size === last) return
    last = size
  }
}

/** Bytes of the files under `dir`. */
async function du (dir: string): Promise<number> {
  let bytes = 0
  for (const entry of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) bytes += (await fs.stat(path.join(entry.parentPath, entry.name))).size
  }
  return bytes
}

/** Starts the daemon on a fresh data dir, with the rate limits off, and waits until clients can find it. */
async function startDaemon (net: Testnet, o: Options, dir: string | null = null): Promise<{ daemon: Daemon, monitorUrl: string, publicKey: Buffer, storage: string, readyMs: number }> {
  const storage = dir ?? await tempDir('root-peer-bench-')
  const t0 = performance.now()
  const daemon = new Daemon({
    ...benchEnv(net),
    STORAGE_DIR: storage,
    MAX_PEERS: String(Math.max(2048, o.peers + 64)),
    ...(o.heapSnapshot !== null ? { NODE_OPTIONS: `--heapsnapshot-signal=SIGUSR2 --diagnostic-dir=${o.heapSnapshot}` } : {}),
    ...o.daemonEnv
  }, o.profile)
  cleanups.push(() => daemon.stop())
  const monitor = await daemon.line(l => typeof l.url === 'string')
  const ready = await daemon.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  const readyMs = Math.round(performance.now() - t0)
  await daemon.line(l => l.msg === 'announced on the discovery topic')
  return { daemon, monitorUrl: monitor.url, publicKey: Buffer.from(ready.publicKey, 'hex'), storage, readyMs }
}

async function main (): Promise<void> {
  const o = parseArgs(process.argv.slice(2))
  const payload = 'x'.repeat(o.payload)
  const result: Record<string, unknown> = { clients: o.clients, messages: o.messages, payload: o.payload }

  await build()
  const limit = await hypercoreLimit(records(o.clients * o.messages, o.payload), o.latencyRate)
  result.hypercore = limit

  const net = await createTestnet(5, { host: '127.0.0.1' })
  cleanups.push(() => net.destroy())
  const ref = o.skipReference ? null : await reference(net, o, payload)
  if (ref !== null) result.reference = ref
  if (o.profile !== null) await fs.mkdir(o.profile, { recursive: true })
  const { daemon, monitorUrl, publicKey } = await startDaemon(net, o)
  // each step's window in seconds from the daemon's spawn: `bench/profile.ts FILE --from A --to B` reads one step's samples
  const steps: Record<string, [number, number]> = {}
  result.steps = steps
  const step = (name: string, t0: number): void => { steps[name] = [round2((t0 - daemon.spawnedAt) / 1000), round2((performance.now() - daemon.spawnedAt) / 1000)] }
  const monitor = { url: monitorUrl }
  await sleep(500)
  const rssIdle = await daemon.rssMB()
  const heapIdle = await heapMB(monitor.url)

  const clients = Array.from({ length: o.clients }, () => new Client(net))
  await Promise.all(clients.map(c => c.connect()))
  const batches0 = (await stats(monitor.url)).counters.appendBatches
  const cpu0 = await daemon.cpuSeconds()
  const own0 = process.cpuUsage()
  const t0 = performance.now()
  const ing = await ingestRuns(clients, o.messages, payload)
  const ingestMs = performance.now() - t0
  step('ingest', t0)
  const daemonCpu = round2((await daemon.cpuSeconds() - cpu0) / (ingestMs / 1000))
  const own = process.cpuUsage(own0)
  const clientCpu = round2((own.user + own.system) / 1000 / ingestMs)
  const rssAfterIngest = await daemon.rssMB()
  const heapAfterIngest = await heapMB(monitor.url)
  const messagesPerAppend = round2(RUNS * o.clients * o.messages / ((await stats(monitor.url)).counters.appendBatches - batches0))
  // CPU in cores used during the ingest (1 = one core busy all the time)
  result.ingest = { ...ing, ofLimit: round2(ing.perSecond / limit.appendPerSecond), daemonCpu, clientCpu, messagesPerAppend }
  if (!o.skipBatched) {
    const bcpu0 = await daemon.cpuSeconds()
    const bt0 = performance.now()
    const runs = []
    for (let run = 0; run < RUNS; run++) runs.push(await ingestBatched(clients, o.messages, payload, run))
    step('ingestBatched', bt0)
    const daemonCpu = round2((await daemon.cpuSeconds() - bcpu0) / ((performance.now() - bt0) / 1000))
    const b = [...runs].sort((x, y) => x.perSecond - y.perSecond)[RUNS >> 1]
    result.ingestBatched = { ...b, runs: runs.map(r => r.perSecond), ofLimit: round2(b.perSecond / limit.appendPerSecond), daemonCpu }
  }

  if (!o.skipSync) {
    const st0 = performance.now()
    const syn = await syncMedian(net, o, daemon)
    step('sync', st0)
    result.sync = { ...syn, ofLimit: round2(syn.perSecond / limit.getPerSecond) }
  }
  const reader = new Client(net)
  await reader.connect()

  const lt0 = performance.now()
  if (!o.skipLatency) result.ackLatencyMs = { rate: o.latencyRate, burst: o.latencyBurst, ...await latency(reader, o.latencySeconds, o.latencyRate, o.latencyBurst, payload) }
  if (!o.skipLatency) step('ackLatency', lt0)
  if (!o.skipLive) {
    const follower = new Client(net)
    await follower.connect()
    const vt0 = performance.now()
    const l = await live(reader, follower, o.latencySeconds, o.latencyRate, o.latencyBurst, payload)
    step('live', vt0)
    result.live = { rate: o.latencyRate, burst: o.latencyBurst, ...l, ofAck: { p50: round2(l.deliveryMs.p50 / l.ackMs.p50), p99: round2(l.deliveryMs.p99 / l.ackMs.p99) } }
    await follower.destroy()
  }
  if (ref !== null) {
    const of = (a: number | undefined, b: number | undefined): number | null => a === undefined || b === undefined ? null : round2(a / b)
    const r = result as any
    result.ofReference = {
      ingest: of(r.ingest.perSecond, ref.ingest.perSecond),
      sync: of(r.sync?.perSecond, ref.sync?.perSecond),
      ackP50: of(r.ackLatencyMs?.p50, ref.ackLatencyMs?.p50),
      ackP99: of(r.ackLatencyMs?.p99, ref.ackLatencyMs?.p99)
    }
  }
  result.memoryMB = { idle: rssIdle, afterIngest: rssAfterIngest, heapIdle, heapAfterIngest }

  if (!o.skipConnections) {
    const c = await connections(net, publicKey, o.peers)
    await sleep(1000)
    result.connections = { peers: o.peers, ...c, rssMBAfter: await daemon.rssMB() }
  }
  const first = await stats(monitor.url)
  result.daemon = { messages: first.totalMessages, appendBatches: first.counters.appendBatches }
  await daemon.stop()
  await Promise.all([...clients, reader].map(c => c.destroy()))

  // a fresh daemon, so the rooms' figure is not the high-water mark of the steps before
  if (!o.skipRooms) result.rooms = await roomsStep(net, o, payload)
  result.machine = { nproc: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, loadavg: os.loadavg().map(x => Math.round(x * 100) / 100) }

  console.log(JSON.stringify(result))
  printTable(result as any)
}

function printTable (r: any): void {
  const rows: Array<[string, string, string]> = [
    ['hypercore batched append (limit)', `${r.hypercore.appendPerSecond} blocks/s`, `median of ${r.hypercore.appendRuns.join(', ')}; ${r.hypercore.blockBytes}-byte blocks, 100 an append`],
    ['hypercore concurrent get (limit)', `${r.hypercore.getPerSecond} blocks/s`, `median of ${r.hypercore.getRuns.join(', ')}; 1,000 gets at a time`],
    ['hypercore single append', `p50 ${r.hypercore.singleAppendMs.p50} ms, p99 ${r.hypercore.singleAppendMs.p99} ms`, `one block at a time, paced at ${r.ackLatencyMs?.rate ?? '-'} /s`],
  ]
  const ref = r.reference
  const ofRef = (key: string): string => r.ofReference?.[key] == null ? '' : `${r.ofReference[key]}× the reference's; `
  if (ref !== undefined) {
    rows.push(['reference ingest', `${ref.ingest.perSecond} msg/s`, `median of ${ref.ingest.runs.join(', ')}; the wire alone, rooms in memory (bench/reference.ts); its CPU ${ref.ingest.serverCpu} cores`])
    if (ref.sync !== undefined) rows.push(['reference catch-up', `${ref.sync.perSecond} msg/s`, `median of ${ref.sync.runs.join(', ')}`])
    if (ref.ackLatencyMs !== undefined) rows.push(['reference ack latency', `p50 ${ref.ackLatencyMs.p50} ms, p99 ${ref.ackLatencyMs.p99} ms`, ''])
  }
  rows.push(['ingest', `${r.ingest.perSecond} msg/s`, `median of ${r.ingest.runs.join(', ')}; ${ofRef('ingest')}${r.ingest.ofLimit}× the append limit; daemon CPU ${r.ingest.daemonCpu} cores, bench clients ${r.ingest.clientCpu}, ${r.ingest.messagesPerAppend} msg/append (target ≥ 0.8× the reference)`])
  if (r.ingestBatched !== undefined) rows.push(['ingest, batched', `${r.ingestBatched.perSecond} msg/s`, `median of ${r.ingestBatched.runs.join(', ')}; ${r.ingestBatched.ofLimit}× the append limit, in message-batch frames of ${r.ingestBatched.batch}; daemon CPU ${r.ingestBatched.daemonCpu} cores (target ≥ 0.8× the append limit)`])
  if (r.sync !== undefined) rows.push(['catch-up (sync)', `${r.sync.perSecond} msg/s`, `${ofRef('sync')}${r.sync.ofLimit}× the get limit; median of ${r.sync.runs.join(', ')} (target ≥ 0.8× both)`])
  if (r.ackLatencyMs !== undefined) rows.push(['ack latency', `p50 ${r.ackLatencyMs.p50} ms, p99 ${r.ackLatencyMs.p99} ms`, `p99 ${ofRef('ackP99')}at ${r.ackLatencyMs.rate} msg/s in bursts of ${r.ackLatencyMs.burst} (target p99 ≤ 1.5× the reference's)`])
  if (r.live !== undefined) rows.push(['live delivery', `p50 ${r.live.deliveryMs.p50} ms, p99 ${r.live.deliveryMs.p99} ms`, `write to the follower's page; ${r.live.ofAck.p50}× / ${r.live.ofAck.p99}× the same writes' ack p50 ${r.live.ackMs.p50} / p99 ${r.live.ackMs.p99} ms (target ≤ 1.5×)`])
  if (r.connections !== undefined) rows.push(['connections', `${r.connections.announced}/${r.connections.peers} in ${r.connections.ms} ms`, `target: all 1,000 announced; RSS after ${r.connections.rssMBAfter} MB`])
  rows.push(['RSS idle / after ingest', `${r.memoryMB.idle} / ${r.memoryMB.afterIngest} MB`, ''])
  const rm = r.rooms
  if (rm !== undefined) {
    rows.push(['room registration', `${rm.registerPerSecond} rooms/s`, `${rm.registered} rooms in ${rm.registerMs} ms (target ≥ 10,000/s); then ${rm.active} active in ${rm.activeMs} ms`])
    rows.push(['RSS with rooms', `${rm.rssMB} MB (${rm.rssMBAtOnce} MB at once)`, `heap ${rm.heap.heapUsed} MB used; ${rm.total} rooms, ${rm.open} open, ${rm.announced} announced; settled ${rm.settleSeconds} s (target ≤ 250 MB)`])
    rows.push(['disk per room', `${rm.diskBytesPerRoom} bytes`, 'the data dir over the rooms'])
    rows.push(['stop with those rooms', `${rm.stopMs} ms`, `after the restart ${rm.restartStopMs} ms (target ≤ 10 s)`])
    rows.push(['restart with those rooms', `ready in ${rm.restartReadyMs} ms`, `${rm.restartCounts.rooms} rooms, ${rm.restartCounts.messages} messages (target ≤ 5 s)`])
    rows.push(['RSS after the restart', `${rm.afterRestart.rssMB} MB`, `heap ${rm.afterRestart.heap.heapUsed} MB used; ${rm.afterSlept.rssMB} MB after the slept rooms' frames`])
    rows.push(['a slept room\'s frames', `register-room p50 ${rm.slept.registerMs.p50} ms (max ${rm.slept.registerMs.max}), message p50 ${rm.slept.messageMs.p50} ms (max ${rm.slept.messageMs.max})`, `${rm.slept.samples} rooms each (target: message ≤ 20 ms)`])
  }
  const w0 = Math.max(...rows.map(x => x[0].length))
  const w1 = Math.max(...rows.map(x => x[1].length))
  for (const [a, b, c] of rows) console.log(`${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}`)
}

runBench(main)
