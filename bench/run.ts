// npm run bench [-- --clients 4 --messages 5000 --payload 240 --peers 1000 --rooms 10000 --active 1000
//                  --latency-seconds 5 --latency-rate 500 --settle-seconds 15
//                  --skip-sync --skip-latency --skip-connections --skip-rooms
//                  --profile DIR (node --cpu-prof on the daemon) --heap-snapshot DIR --daemon-env KEY=VALUE]
// Starts a loopback DHT testnet and the daemon as a child process, drives it over real Hyperswarm
// connections, measures Hypercore's own limit on the same records in the same run, and prints one
// JSON line and a table. Everything stays on 127.0.0.1; temp dirs and the child are removed at the end.
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import Corestore from 'corestore'
import HyperDHT from 'hyperdht'
import createTestnet, { type Testnet } from 'hyperdht/testnet.js'
import crypto from 'hypercore-crypto'
import { encodeRecord } from '../src/protocol/protocol.js'
import { Client, Daemon, benchEnv, build, cleanups, runBench, heapMB, percentile, rate, round2, sleep, stats, tempDir } from './harness.js'

interface Options {
  clients: number
  messages: number
  payload: number
  peers: number
  rooms: number
  active: number
  latencySeconds: number
  latencyRate: number
  /** seconds to wait after the rooms step before the settled RSS is read */
  settleSeconds: number
  skipConnections: boolean
  skipRooms: boolean
  skipLatency: boolean
  skipSync: boolean
  profile: string | null
  /** write a heap snapshot of the daemon (a full GC) after the rooms step, into this dir */
  heapSnapshot: string | null
  /** extra environment for the daemon, from --daemon-env KEY=VALUE */
  daemonEnv: Record<string, string>
}

function parseArgs (argv: string[]): Options {
  const o: Options = { clients: 4, messages: 5000, payload: 240, peers: 1000, rooms: 10_000, active: 1000, latencySeconds: 5, latencyRate: 500, settleSeconds: 15, skipConnections: false, skipRooms: false, skipLatency: false, skipSync: false, profile: null, heapSnapshot: null, daemonEnv: {} }
  const numeric: Record<string, keyof Options> = { '--clients': 'clients', '--messages': 'messages', '--payload': 'payload', '--peers': 'peers', '--rooms': 'rooms', '--active': 'active', '--latency-seconds': 'latencySeconds', '--latency-rate': 'latencyRate', '--settle-seconds': 'settleSeconds' }
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2)
    if (flag === '--skip-connections') o.skipConnections = true
    else if (flag === '--skip-rooms') o.skipRooms = true
    else if (flag === '--skip-latency') o.skipLatency = true
    else if (flag === '--skip-sync') o.skipSync = true
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
async function hypercoreLimit (blocks: Buffer[], pacedRate: number): Promise<{ appendPerSecond: number, getPerSecond: number, blockBytes: number, singleAppendMs: { p50: number, p99: number } }> {
  const store = new Corestore(await tempDir('root-peer-bench-core-'))
  const core = store.get({ name: 'limit' })
  await core.ready()
  let t0 = performance.now()
  for (let i = 0; i < blocks.length; i += 100) await core.append(blocks.slice(i, i + 100))
  const appendMs = performance.now() - t0
  t0 = performance.now()
  for (let i = 0; i < blocks.length; i += 1000) {
    const gets: Array<Promise<Buffer | null>> = []
    for (let j = i; j < Math.min(blocks.length, i + 1000); j++) gets.push(core.get(j))
    await Promise.all(gets)
  }
  const getMs = performance.now() - t0
  // one block at a time at the paced rate of the ack latency test: Hypercore's own share of an ack's latency
  const took: number[] = []
  t0 = performance.now()
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
    appendPerSecond: rate(blocks.length, appendMs),
    getPerSecond: rate(blocks.length, getMs),
    blockBytes: blocks[0].byteLength,
    singleAppendMs: { p50: round2(percentile(took, 0.5)), p99: round2(percentile(took, 0.99)) }
  }
}

async function ingest (clients: Client[], messages: number, payload: string): Promise<{ perSecond: number, ms: number }> {
  const t0 = performance.now()
  await Promise.all(clients.map((c, k) => new Promise<void>((resolve, reject) => {
    let acked = 0
    c.onFrame = f => {
      if (f.type === 'error') reject(new Error(`ingest: ${f.code} ${f.message}`))
      if (f.type === 'message-ack' && ++acked === messages) resolve()
    }
    for (let i = 0; i < messages; i++) c.send({ type: 'message', roomName: `bench-ingest-${k}`, message: payload, id: `c${k}-${i}` })
  })))
  const ms = performance.now() - t0
  return { perSecond: rate(clients.length * messages, ms), ms: Math.round(ms) }
}

async function latency (client: Client, seconds: number, perSecond: number, payload: string): Promise<{ p50: number, p99: number, max: number, count: number }> {
  const count = Math.round(seconds * perSecond)
  const sentAt = new Array<number>(count)
  const took: number[] = []
  const done = new Promise<void>(resolve => {
    client.onFrame = f => {
      if (f.type !== 'message-ack') return
      took.push(performance.now() - sentAt[Number(f.id.slice(1))])
      if (took.length === count) resolve()
    }
  })
  const t0 = performance.now()
  for (let i = 0; i < count; i++) {
    // paced against the clock, so a late tick does not slow the rate down
    const due = t0 + i * 1000 / perSecond
    const wait = due - performance.now()
    if (wait > 1) await sleep(wait)
    sentAt[i] = performance.now()
    client.send({ type: 'message', roomName: 'bench-latency', message: payload, id: `l${i}` })
  }
  await done
  took.sort((a, b) => a - b)
  const round = (x: number): number => Math.round(x * 100) / 100
  return { p50: round(percentile(took, 0.5)), p99: round(percentile(took, 0.99)), max: round(took[took.length - 1]), count }
}

async function sync (client: Client, roomName: string, daemon: Daemon): Promise<{ perSecond: number, messages: number, pages: number, daemonCpu: number }> {
  const cpu0 = await daemon.cpuSeconds()
  let next = 0
  let messages = 0
  let pages = 0
  const t0 = performance.now()
  while (true) {
    const page = await client.request({ type: 'sync-request', roomName, lastIndex: next, limit: 1000 })
    if (page.type !== 'sync-response') throw new Error(`sync: ${page.code}`)
    messages += page.messages.length
    pages++
    next = page.nextIndex
    if (!page.hasMore) break
  }
  const ms = performance.now() - t0
  return { perSecond: rate(messages, ms), messages, pages, daemonCpu: round2((await daemon.cpuSeconds() - cpu0) / (ms / 1000)) }
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

/** Registers `total` rooms, then makes `active` of them active with one message each. */
async function manyRooms (clients: Client[], total: number, active: number, payload: string): Promise<void> {
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

/** Starts the daemon on a fresh data dir, with the rate limits off, and waits until clients can find it. */
async function startDaemon (net: Testnet, o: Options, dir: string | null = null): Promise<{ daemon: Daemon, monitorUrl: string, publicKey: Buffer, storage: string, readyMs: number }> {
  const storage = dir ?? await tempDir('root-peer-bench-')
  const t0 = performance.now()
  const daemon = new Daemon({
    ...benchEnv(net),
    STORAGE_DIR: storage,
    MAX_PEERS: String(Math.max(2048, o.peers + 64)),
    MAX_ROOMS: String(Math.max(100_000, o.rooms * 2)),
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
  if (o.profile !== null) await fs.mkdir(o.profile, { recursive: true })
  const { daemon, monitorUrl, publicKey } = await startDaemon(net, o)
  const monitor = { url: monitorUrl }
  await sleep(500)
  const rssIdle = await daemon.rssMB()
  const heapIdle = await heapMB(monitor.url)

  const clients = Array.from({ length: o.clients }, () => new Client(net))
  await Promise.all(clients.map(c => c.connect()))
  const batches0 = (await stats(monitor.url)).counters.appendBatches
  const cpu0 = await daemon.cpuSeconds()
  const own0 = process.cpuUsage()
  const ing = await ingest(clients, o.messages, payload)
  const daemonCpu = round2((await daemon.cpuSeconds() - cpu0) / (ing.ms / 1000))
  const own = process.cpuUsage(own0)
  const clientCpu = round2((own.user + own.system) / 1000 / ing.ms)
  const rssAfterIngest = await daemon.rssMB()
  const heapAfterIngest = await heapMB(monitor.url)
  const messagesPerAppend = round2(o.clients * o.messages / ((await stats(monitor.url)).counters.appendBatches - batches0))
  // CPU in cores used during the ingest (1 = one core busy all the time)
  result.ingest = { ...ing, ofLimit: round2(ing.perSecond / limit.appendPerSecond), daemonCpu, clientCpu, messagesPerAppend }

  // each time a fresh client reads one full room from index 0; the median of three
  const syncs = []
  for (let k = 0; k < (o.skipSync ? 0 : 3); k++) {
    const reader = new Client(net)
    await reader.connect()
    syncs.push(await sync(reader, `bench-ingest-${k % o.clients}`, daemon))
    if (k < 2) await reader.swarm.destroy()
  }
  syncs.sort((a, b) => a.perSecond - b.perSecond)
  const syn = syncs[1]
  if (syn !== undefined) result.sync = { ...syn, ofLimit: round2(syn.perSecond / limit.getPerSecond), runs: syncs.map(x => x.perSecond) }
  const reader = new Client(net)
  await reader.connect()

  if (!o.skipLatency) result.ackLatencyMs = { rate: o.latencyRate, ...await latency(reader, o.latencySeconds, o.latencyRate, payload) }
  result.memoryMB = { idle: rssIdle, afterIngest: rssAfterIngest, heapIdle, heapAfterIngest }

  if (!o.skipConnections) {
    const c = await connections(net, publicKey, o.peers)
    await sleep(1000)
    result.connections = { peers: o.peers, ...c, rssMBAfter: await daemon.rssMB() }
  }
  const first = await stats(monitor.url)
  result.daemon = { messages: first.totalMessages, appendBatches: first.counters.appendBatches }
  await daemon.stop()
  await Promise.all([...clients, reader].map(c => c.swarm.destroy()))

  // a fresh daemon, so the rooms' figure is not the high-water mark of the steps before
  if (!o.skipRooms) {
    const { daemon, monitorUrl, storage } = await startDaemon(net, o)
    const monitor = { url: monitorUrl }
    const clients = Array.from({ length: o.clients }, () => new Client(net))
    await Promise.all(clients.map(c => c.connect()))
    const t0 = performance.now()
    await manyRooms(clients, o.rooms, o.active, payload)
    const ms = Math.round(performance.now() - t0)
    await sleep(1000)
    const rssAtOnce = await daemon.rssMB()
    // Corestore closes a core whose last session closed after 4 of its 2 s GC cycles; V8 shrinks its heap when idle
    const settleCpu0 = await daemon.cpuSeconds()
    await sleep(o.settleSeconds * 1000)
    const settleCpu = round2((await daemon.cpuSeconds() - settleCpu0) / o.settleSeconds)
    const s = await stats(monitor.url)
    if (o.heapSnapshot !== null) {
      await fs.mkdir(o.heapSnapshot, { recursive: true })
      daemon.child.kill('SIGUSR2')
      // the snapshot is complete when its size stops changing
      let last = -1
      while (true) {
        await sleep(1000)
        const files = await fs.readdir(o.heapSnapshot)
        const sizes = await Promise.all(files.map(f => fs.stat(path.join(o.heapSnapshot!, f)).then(st => st.size)))
        const size = sizes.reduce((a, b) => a + b, 0)
        if (size > 0 && size === last) break
        last = size
      }
    }
    result.rooms = { registered: o.rooms, active: o.active, ms, rssMBAtOnce: rssAtOnce, settleSeconds: o.settleSeconds, settleCpu, rssMB: await daemon.rssMB(), heap: await heapMB(monitor.url), open: s.rooms.open, announced: s.rooms.announced, total: s.rooms.total }
    await daemon.stop()
    await Promise.all(clients.map(c => c.swarm.destroy()))
    // a restart reconciles every room's count with its core (opened, read, closed, 16 at a time)
    const again = await startDaemon(net, o, storage)
    const counted = await stats(again.monitorUrl)
    result.rooms = { ...result.rooms as object, restartReadyMs: again.readyMs, restartCounts: { rooms: counted.totalRooms, messages: counted.totalMessages } }
    await again.daemon.stop()
  }
  result.machine = { nproc: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, loadavg: os.loadavg().map(x => Math.round(x * 100) / 100) }

  console.log(JSON.stringify(result))
  printTable(result as any)
}

function printTable (r: any): void {
  const rows: Array<[string, string, string]> = [
    ['hypercore batched append (limit)', `${r.hypercore.appendPerSecond} blocks/s`, `${r.hypercore.blockBytes}-byte blocks`],
    ['hypercore concurrent get (limit)', `${r.hypercore.getPerSecond} blocks/s`, ''],
    ['hypercore single append', `p50 ${r.hypercore.singleAppendMs.p50} ms, p99 ${r.hypercore.singleAppendMs.p99} ms`, `one block at a time, paced at ${r.ackLatencyMs?.rate ?? '-'} /s`],
    ['ingest', `${r.ingest.perSecond} msg/s`, `${Math.round(r.ingest.ofLimit * 100)}% of append limit (target ≥ 50%); daemon CPU ${r.ingest.daemonCpu} cores, bench clients ${r.ingest.clientCpu}, ${r.ingest.messagesPerAppend} msg/append`],
  ]
  if (r.sync !== undefined) rows.push(['sync', `${r.sync.perSecond} msg/s`, `${Math.round(r.sync.ofLimit * 100)}% of get limit (target ≥ 50%); median of ${r.sync.runs.join(', ')}`])
  if (r.ackLatencyMs !== undefined) rows.push(['ack latency', `p50 ${r.ackLatencyMs.p50} ms, p99 ${r.ackLatencyMs.p99} ms`, `at ${r.ackLatencyMs.rate} msg/s (target p99 ≤ 10 ms)`])
  if (r.connections !== undefined) rows.push(['connections', `${r.connections.announced}/${r.connections.peers} in ${r.connections.ms} ms`, `target: all 1,000 announced; RSS after ${r.connections.rssMBAfter} MB`])
  rows.push(['RSS idle / after ingest', `${r.memoryMB.idle} / ${r.memoryMB.afterIngest} MB`, ''])
  if (r.rooms !== undefined) rows.push(['RSS with rooms', `${r.rooms.rssMB} MB (${r.rooms.rssMBAtOnce} MB at once)`, `${r.rooms.total} rooms, ${r.rooms.active} active, ${r.rooms.open} open, ${r.rooms.announced} announced; settled ${r.rooms.settleSeconds} s (target ≤ 150 MB)`])
  if (r.rooms !== undefined) rows.push(['restart with those rooms', `ready in ${r.rooms.restartReadyMs} ms`, `counts from the cores: ${r.rooms.restartCounts.rooms} rooms, ${r.rooms.restartCounts.messages} messages`])
  const w0 = Math.max(...rows.map(x => x[0].length))
  const w1 = Math.max(...rows.map(x => x[1].length))
  for (const [a, b, c] of rows) console.log(`${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}`)
}

runBench(main)
