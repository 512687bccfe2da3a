import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import crypto from 'hypercore-crypto'
import type { Testnet } from 'hyperdht/testnet.js'
import { chromium } from 'playwright-core'
import { Metrics } from '../src/monitor/metrics.js'
import { Monitor, type MonitorOptions, type MonitorStats } from '../src/monitor/monitor.js'
import { ChatRootPeer } from '../src/root-peer.js'
import { assertPresent, bootstrapEnv, client, daemon, findTool, rawPeer, ROOT, skipUnlessCI, teardown, testnet, tmpDir } from './helpers.js'

type Ctx = Parameters<typeof teardown>[0]

const CHROMIUM = '/usr/bin/chromium'
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
/** outside the checkout: a test run leaves the project's tree as it found it */
const ARTIFACTS = path.join(os.tmpdir(), 'root-peer-test-artifacts')

interface Documented { type: string | undefined, conditional: boolean }

/**
 * The metrics docs/monitoring.md documents, read from its two metrics tables: every name in a row's first cell
 * (`{label}` dropped), with the type the row gives (the stack's table: "All are gauges", but a row whose `from`
 * says "counter"; prom-client's default metrics: none, they are of several types), and whether the row says it is
 * there "only once" something holds.
 * A `prefix_*` row stands for the names of that prefix its meaning cell lists.
 */
async function documentedMetrics (): Promise<Map<string, Documented>> {
  const text = await fs.readFile(path.join(ROOT, 'docs/monitoring.md'), 'utf8')
  const metrics = new Map<string, Documented>()
  let header = ''
  for (const line of text.split('\n')) {
    if (!line.startsWith('|')) {
      header = ''
      continue
    }
    const cells = line.split('|').slice(1, -1).map(c => c.trim())
    if (header === '') header = line
    const stack = header === '| metric | from | meaning |'
    if (!(stack || header === '| metric | type | meaning |') || line === header || line.startsWith('|---')) continue
    const meaning = cells[2]
    const conditional = meaning.includes('only once')
    for (const [, span] of cells[0].matchAll(/`([^`]+)`/g)) {
      const name = span.replace(/\{.*\}$/, '')
      if (!name.endsWith('*')) {
        metrics.set(name, { type: stack ? (cells[1].includes('counter') ? 'counter' : 'gauge') : cells[1], conditional })
        continue
      }
      for (const [, listed] of meaning.matchAll(/`([^`]+)`/g)) if (listed.startsWith(name.slice(0, -1))) metrics.set(listed, { type: undefined, conditional })
    }
  }
  return metrics
}

interface Monitored { rootPeer: ChatRootPeer, monitor: Monitor }

/** Metrics, then the root peer fed by them, then the monitor, in the order bin.ts makes them; not started. */
async function monitored (t: Ctx, net: Testnet, opts: Partial<MonitorOptions> = {}): Promise<Monitored> {
  const metrics = new Metrics()
  const rootPeer = new ChatRootPeer({ storageDir: await tmpDir(t), bootstrap: net.bootstrap, dhtHost: '127.0.0.1', statsInterval: 0, onLatency: metrics.onLatency })
  metrics.attach(rootPeer)
  const monitor = new Monitor(rootPeer, { metrics, port: 0, ...opts })
  teardown(t, () => rootPeer.close())
  teardown(t, () => monitor.close())
  return { rootPeer, monitor }
}

/** As `monitored`, listening, and the root peer announced with its DHT bootstrapped. */
async function started (t: Ctx, net: Testnet, opts: Partial<MonitorOptions> = {}): Promise<Monitored> {
  const m = await monitored(t, net, opts)
  const announced = once(m.rootPeer, 'discovery-announced')
  const bootstrapped = once(m.rootPeer, 'dht-bootstrapped')
  await m.monitor.ready()
  await m.rootPeer.ready()
  await Promise.all([announced, bootstrapped])
  return m
}

async function getJson (url: string): Promise<{ status: number, body: any, headers: Headers }> {
  const res = await fetch(url)
  return { status: res.status, body: await res.json(), headers: res.headers }
}

interface Sample { name: string, labels: Record<string, string>, value: number }

/** A strict reader of the Prometheus text format: every line is a comment, blank, or a sample. */
function parseProm (text: string): { types: Map<string, string>, samples: Sample[] } {
  const types = new Map<string, string>()
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ')) continue
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line)
    if (type !== null) {
      types.set(type[1], type[2])
      continue
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    assert.ok(m !== null, `not a Prometheus sample line: ${JSON.stringify(line)}`)
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2]
    // prom-client writes NaN as `Nan` (an average over nothing yet); Prometheus reads it case-insensitively
    const value = Number(m[3].replace('+Inf', 'Infinity'))
    assert.ok(!Number.isNaN(value) || /^nan$/i.test(m[3]), `not a number in ${JSON.stringify(line)}`)
    samples.push({ name: m[1], labels, value })
  }
  for (const s of samples) {
    const family = types.has(s.name) ? s.name : s.name.replace(/_(bucket|sum|count)$/, '')
    assert.ok(types.has(family), `sample ${s.name} has no # TYPE line`)
  }
  return { types, samples }
}

function value (samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find(s => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value
}

test('/health: 503 with the reasons before the root peer is ready, 200 once announced and bootstrapped, 503 "shutting down" while it closes', async t => {
  const net = await testnet(t)
  const { rootPeer, monitor } = await monitored(t, net)
  await monitor.ready()
  assert.match(monitor.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  assert.notEqual(monitor.port, 0)

  const before = await getJson(monitor.url + '/health')
  assert.equal(before.status, 503)
  assert.match(before.headers.get('content-type') ?? '', /^application\/json/)
  assert.equal(before.body.ok, false)
  assert.ok(before.body.reasons.includes('storage not open'), JSON.stringify(before.body))
  assert.ok(before.body.reasons.includes('DHT not bootstrapped'), JSON.stringify(before.body))

  const announced = once(rootPeer, 'discovery-announced')
  const bootstrapped = once(rootPeer, 'dht-bootstrapped')
  await rootPeer.ready()
  await Promise.all([announced, bootstrapped])
  const after = await getJson(monitor.url + '/health')
  assert.equal(after.status, 200)
  assert.deepEqual(after.body, { ok: true, reasons: [], storage: true, discovery: true, dht: true })

  const closing = once(rootPeer, 'closing')
  const closed = rootPeer.close()
  await closing
  const during = await getJson(monitor.url + '/health')
  assert.equal(during.status, 503)
  assert.deepEqual(during.body.reasons, ['shutting down'])
  await closed
  assert.equal((await fetch(monitor.url + '/health')).status, 503)

  await monitor.close()
  await assert.rejects(fetch(monitor.url + '/health'), 'closed: nothing listens any more')
})

test('/metrics: Prometheus text from prom-client with every metric of docs/monitoring.md\'s tables, of its documented type, no undocumented root_peer_* metric, and values matching the root peer\'s counters', async t => {
  const net = await testnet(t)
  const { rootPeer, monitor } = await started(t, net)
  const c = await client(t, net)
  for (let i = 0; i < 12; i++) await c.sendMessage('alpha', `a${i}`)
  await Promise.all(Array.from({ length: 5 }, (_, i) => c.sendMessage('beta', `b${i}`)))
  let synced = 0
  for await (const page of c.sync('alpha', 0)) synced += page.messages.length
  assert.equal(synced, 12)

  const raw = await rawPeer(t, net)
  await raw.nextOfType('root-peer-announcement')
  raw.send('not json')
  assert.equal((await raw.nextOfType('error')).code, 'BAD_FRAME')
  raw.send({ type: 'message', roomName: 'beta', message: 'once', id: 'dup-1' })
  raw.send({ type: 'message', roomName: 'beta', message: 'once', id: 'dup-1' })
  await raw.nextOfType('message-ack')
  assert.equal((await raw.nextOfType('message-ack')).duplicate, true)

  const savesBefore = rootPeer.counters.stateSaves
  const res = await fetch(monitor.url + '/metrics')
  const text = await res.text()
  const savesAfter = rootPeer.counters.stateSaves
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
  const { types, samples } = parseProm(text)
  const documented = await documentedMetrics()
  assert.ok(documented.size >= 130, `${documented.size} metrics read from the docs`)
  for (const [name, { type, conditional }] of documented) {
    // dht_nr_records: "only once it is a persistent DHT node", which a node of a fresh testnet is not yet
    if (conditional && !types.has(name)) continue
    assert.ok(types.has(name), `${name} is documented but not exported`)
    if (type !== undefined) assert.equal(types.get(name), type, `${name} is a ${type}`)
  }
  assert.deepEqual([...documented].filter(([, d]) => d.conditional).map(([name]) => name), ['dht_nr_records'], 'the only metric documented as conditional')
  for (const name of types.keys()) if (name.startsWith('root_peer_')) assert.ok(documented.has(name), `${name} is exported but not documented`)
  assert.equal(types.get('root_peer_frames_received_total'), 'counter')
  assert.equal(types.get('root_peer_append_latency_seconds'), 'histogram')
  assert.equal(types.get('root_peer_peers'), 'gauge')
  // Prometheus' naming convention, which promtool checks (the test below): `_total` names a counter and only a counter
  for (const [name, type] of types) assert.equal(name.endsWith('_total'), type === 'counter', `${name} is a ${type}`)
  assert.equal(types.get('dht_holepunch_try_later_total'), 'counter', 'a count hyperdht only increases')
  assert.equal(types.get('hypercore_global_cache_entries'), 'gauge', 'a level: hypercore-stats\' name without `_total`')

  assert.equal(value(samples, 'root_peer_rooms'), 2)
  assert.equal(value(samples, 'root_peer_rooms_open'), rootPeer.roomCounts.open)
  assert.ok(rootPeer.roomCounts.open >= 1)
  assert.equal(value(samples, 'root_peer_messages'), 18)
  assert.equal(value(samples, 'root_peer_messages_stored_total'), 18)
  assert.equal(value(samples, 'root_peer_duplicate_messages_total'), 1)
  assert.equal(value(samples, 'root_peer_stored_bytes'), rootPeer.roomCounts.bytes)
  assert.ok(rootPeer.roomCounts.bytes > 18 * 50, 'each stored record is a JSON block of some 100 bytes')
  assert.equal(value(samples, 'root_peer_peers'), 2)
  assert.equal(value(samples, 'root_peer_peer_connections_total'), 2)
  assert.equal(value(samples, 'root_peer_healthy'), 1)
  const nodes = value(samples, 'dht_nr_nodes')!
  assert.ok(nodes >= 1 && nodes === rootPeer.network!.dht.toArray().length, `DHT nodes ${nodes}`)

  for (const [type, n] of Object.entries(rootPeer.counters.framesReceived)) {
    assert.equal(value(samples, 'root_peer_frames_received_total', { type }), n, `frames received of type ${type}`)
  }
  for (const [type, n] of Object.entries(rootPeer.counters.framesSent)) {
    assert.equal(value(samples, 'root_peer_frames_sent_total', { type }), n, `frames sent of type ${type}`)
  }
  // the client's 12 one at a time and the raw peer's 2 as message frames; its 5 at once as one message-batch
  assert.equal(value(samples, 'root_peer_frames_received_total', { type: 'message' }), 14)
  assert.equal(value(samples, 'root_peer_frames_received_total', { type: 'message-batch' }), 1)
  assert.equal(value(samples, 'root_peer_frames_received_total', { type: 'invalid' }), 1)
  assert.equal(value(samples, 'root_peer_frames_sent_total', { type: 'message-ack' }), 14)
  assert.equal(value(samples, 'root_peer_frames_sent_total', { type: 'message-batch-ack' }), 1)
  assert.equal(value(samples, 'root_peer_frames_sent_total', { type: 'root-peer-announcement' }), 2)
  assert.deepEqual(samples.filter(s => s.name === 'root_peer_errors_total').map(s => [s.labels.code, s.value]), [['BAD_FRAME', 1]])

  assert.equal(value(samples, 'root_peer_append_latency_seconds_count'), 18, 'one observation per stored message')
  assert.equal(value(samples, 'root_peer_append_latency_seconds_bucket', { le: '+Inf' }), 18)
  const appendSum = value(samples, 'root_peer_append_latency_seconds_sum')!
  assert.ok(appendSum > 0 && appendSum < 18 * 5, `append latency sum ${appendSum} s`)
  assert.equal(value(samples, 'root_peer_sync_latency_seconds_count'), rootPeer.counters.framesReceived['sync-request'])
  const saves = value(samples, 'root_peer_state_saves_total')!
  assert.ok(saves >= 1 && saves >= savesBefore && saves <= savesAfter, `state saves ${saves}`)
  assert.equal(value(samples, 'root_peer_state_save_failures_total'), 0)
  const rss = value(samples, 'process_resident_memory_bytes')!
  assert.ok(rss > 10e6 && rss < 4e9, `resident memory ${rss}`)

  // the stack's own metrics: hyperswarm-stats (with hyperdht-stats) and hypercore-stats
  const open = value(samples, 'hyperswarm_server_connections_opened')! - value(samples, 'hyperswarm_server_connections_closed')!
  assert.ok(open >= 2, `every admitted client is an open server connection: ${open}`)
  assert.ok(value(samples, 'hyperswarm_nr_peers')! >= 2)
  assert.ok(value(samples, 'hyperswarm_total_bytes_received_over_swarm_streams')! > 18 * 20, 'the messages came over the swarm')
  assert.ok(value(samples, 'udx_total_bytes_received')! >= value(samples, 'hyperswarm_total_bytes_received_over_swarm_streams')!)
  assert.ok(value(samples, 'hypercore_total_cores')! >= rootPeer.roomCounts.open, 'every open room is an open core')
  assert.ok(value(samples, 'hypercore_total_length')! >= 18, 'the open rooms\' cores hold every message')
  assert.ok(value(samples, 'hypercore_filesystem_avail_bytes')! > 0)
})

test('/metrics follows the store when storage is reopened: hypercore-stats counts the new store\'s cores, the scrape never fails', async t => {
  const net = await testnet(t)
  const { rootPeer, monitor } = await started(t, net)
  const c = await client(t, net)
  for (let i = 0; i < 4; i++) await c.sendMessage('alpha', `a${i}`)
  const scrape = async (): Promise<Sample[]> => {
    const res = await fetch(monitor.url + '/metrics')
    assert.equal(res.status, 200)
    return parseProm(await res.text()).samples
  }
  assert.ok(value(await scrape(), 'hypercore_total_length')! >= 4)

  // what a failed write does (STORAGE_ERROR): the data dir is writable again, so the store is reopened within ~1 s
  const before = rootPeer.corestore!
  const recovered = once(rootPeer, 'storage-recovered')
  await rootPeer['storage'].recordFailure(new Error('simulated write failure'))
  await scrape()
  await recovered
  assert.notEqual(rootPeer.corestore, before)
  assert.ok(before.closed)
  await scrape()

  await c.sendMessage('alpha', 'after the reopen')
  let samples = await scrape()
  for (let i = 0; i < 50 && !(value(samples, 'hypercore_total_length')! >= 5); i++) {
    await new Promise(resolve => setTimeout(resolve, 100))
    samples = await scrape()
  }
  assert.ok(value(samples, 'hypercore_total_cores')! >= rootPeer.roomCounts.open && rootPeer.roomCounts.open >= 1)
  assert.ok(value(samples, 'hypercore_total_length')! >= 5, 'the new store\'s core of alpha holds its five messages')
  assert.equal(samples.filter(s => s.name === 'hypercore_total_cores').length, 1, 'one series: the closed store\'s gauges are gone')
})

test('/stats: the root peer\'s stats snapshot plus health, room counts and the messages-per-second history', async t => {
  const net = await testnet(t)
  const { rootPeer, monitor } = await started(t, net, { sampleInterval: 100 })
  const c = await client(t, net)
  await Promise.all(Array.from({ length: 15 }, (_, i) => c.sendMessage('gamma', `g${i}`)))
  await Promise.all(Array.from({ length: 3 }, (_, i) => c.sendMessage('delta', `d${i}`)))
  await once(monitor, 'sample')

  const { status, body } = await getJson(monitor.url + '/stats') as { status: number, body: MonitorStats }
  const expected = rootPeer.stats()
  assert.equal(status, 200)
  assert.equal(body.publicKey, rootPeer.publicKey!.toString('hex'))
  assert.equal(body.totalRooms, 2)
  assert.equal(body.totalMessages, 18)
  assert.equal(body.activePeers, 1)
  assert.deepEqual(body.busiestRooms, expected.busiestRooms)
  assert.deepEqual(body.busiestRooms.map(r => [r.name, r.messageCount]), [['gamma', 15], ['delta', 3]])
  assert.deepEqual({ ...body.counters, stateSaves: 0 }, { ...JSON.parse(JSON.stringify(expected.counters)), stateSaves: 0 })
  assert.ok(Math.abs(body.uptimeSeconds - expected.uptimeSeconds) <= 1)
  assert.ok(Math.abs(body.generatedAt - Date.now()) < 5000)
  assert.deepEqual(body.health, rootPeer.health())
  assert.deepEqual(body.rooms, rootPeer.roomCounts)

  const history = body.messagesPerSecond
  assert.equal(history.intervalSeconds, 0.1)
  assert.equal(history.windowSeconds, 12)
  assert.ok(history.points.length >= 1)
  assert.equal(history.points.reduce((n, p) => n + p.messages, 0), 18, 'every stored message is in one interval of the history')
  assert.ok(history.points.some(p => p.messagesPerSecond > 0))
  for (let i = 1; i < history.points.length; i++) assert.ok(history.points[i].t > history.points[i - 1].t, 'oldest first')
})

test('the rate history is a ring: it keeps the newest historySize intervals', async t => {
  const net = await testnet(t)
  const { monitor } = await monitored(t, net, { sampleInterval: 20, historySize: 3 })
  await monitor.ready()
  for (let i = 0; i < 6; i++) await once(monitor, 'sample')
  const points = monitor.stats().messagesPerSecond.points
  assert.equal(points.length, 3)
  assert.ok(points[2].t >= points[0].t + 30)
})

test('bad requests: JSON 404, 405 for methods other than GET and HEAD, HEAD without a body, malformed HTTP gets 400, and the server keeps serving', async t => {
  const net = await testnet(t)
  const { monitor } = await started(t, net)

  const missing = await getJson(monitor.url + '/nope')
  assert.equal(missing.status, 404)
  assert.deepEqual(missing.body, { error: 'not found' })
  assert.equal((await getJson(monitor.url + '//health')).status, 404)
  assert.equal((await fetch(monitor.url + '/health?probe=1')).status, 200, 'the query string is ignored')

  for (const method of ['POST', 'PUT', 'DELETE', 'OPTIONS']) {
    const res = await fetch(monitor.url + '/health', { method })
    assert.equal(res.status, 405, method)
    assert.equal(res.headers.get('allow'), 'GET, HEAD')
    assert.deepEqual(await res.json(), { error: 'method not allowed' })
  }

  const head = await fetch(monitor.url + '/stats', { method: 'HEAD' })
  assert.equal(head.status, 200)
  assert.ok(Number(head.headers.get('content-length')) > 100)
  assert.equal(await head.text(), '')

  assert.match(await rawHttp(monitor.port, 'GARBAGE\r\n\r\n'), /^HTTP\/1\.1 400 /)
  assert.match(await rawHttp(monitor.port, `GET /${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`), /^HTTP\/1\.1 431 /)
  assert.match(await rawHttp(monitor.port, 'GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n'), /^HTTP\/1\.1 400 /)

  const page = await fetch(monitor.url + '/')
  assert.equal(page.status, 200)
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/)
  assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'/)
  const html = await page.text()
  assert.doesNotMatch(html, /\b(src|href)=["']?(https?:)?\/\//, 'no external assets')
  assert.equal((await fetch(monitor.url + '/health')).status, 200, 'still serving')
})

/** Writes raw bytes to the monitor and returns what it answers before closing. */
async function rawHttp (port: number, request: string): Promise<string> {
  const socket = net.connect(port, '127.0.0.1')
  let answer = ''
  socket.setEncoding('utf8').on('data', (chunk: string) => { answer += chunk })
  socket.on('error', () => {})
  socket.write(request)
  await once(socket, 'close')
  return answer
}

test('the daemon logs the monitor URL, answers /health 200 once ready, and exits 1 with one line naming HOST and PORT when the port is taken', async t => {
  const net = await testnet(t)
  const d = daemon(t, [], { STORAGE_DIR: await tmpDir(t), DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' })
  const listening = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('monitor listening on '))
  assert.match(listening.url, /^http:\/\/127\.0\.0\.1:\d+$/, 'HOST defaults to loopback')
  assert.equal(listening.msg, `monitor listening on ${listening.url}`)
  await d.ready()
  await d.line(l => l.msg === 'DHT bootstrapped')
  const health = await getJson(listening.url + '/health')
  assert.equal(health.status, 200, JSON.stringify(health.body))
  const metrics = await (await fetch(listening.url + '/metrics')).text()
  assert.match(metrics, /^root_peer_healthy 1$/m)
  assert.equal((await d.stop('SIGTERM')).code, 0)

  const taken = http.createServer()
  await new Promise<void>(resolve => taken.listen(0, '127.0.0.1', resolve))
  teardown(t, () => new Promise(resolve => taken.close(resolve)))
  const port = (taken.address() as net.AddressInfo).port
  const storage = await tmpDir(t)
  const second = daemon(t, [], { STORAGE_DIR: storage, DHT_BOOTSTRAP: '127.0.0.1:1', DHT_HOST: '127.0.0.1', PORT: String(port) })
  const { code } = await second.exited
  assert.equal(code, 1)
  const fatal = second.lines.filter(l => l.level >= 50)
  assert.equal(fatal.length, 1, JSON.stringify(second.lines))
  assert.match(fatal[0].msg, new RegExp(`HOST=127\\.0\\.0\\.1 PORT=${port}\\b.*EADDRINUSE`))
  assert.ok(!second.lines.some(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready')), 'the root peer is not started')
  assert.deepEqual(await fs.readdir(storage), [], 'storage is not opened')
})

const PROMTOOL = findTool('promtool')
const noPromtool = PROMTOOL === null ? 'promtool is missing (apt-get install -y prometheus)' : null

/** `promtool check metrics` on `text`: its exit code, and what it printed (a problem a line, or nothing). */
async function promtoolCheck (text: string): Promise<{ code: number | null, output: string }> {
  const child = spawn(PROMTOOL!, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => { output += c })
  child.stderr.setEncoding('utf8').on('data', (c: string) => { output += c })
  child.stdin.end(text)
  const [code] = await once(child, 'close')
  return { code, output }
}

test('a live daemon\'s /metrics, after a signed room, messages, a sync, a follow and a refused frame, passes `promtool check metrics` with no problem reported', { skip: skipUnlessCI(noPromtool) }, async t => {
  assertPresent(noPromtool)
  const net = await testnet(t)
  const d = daemon(t, [], { STORAGE_DIR: await tmpDir(t), DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' })
  const { url } = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('monitor listening on '))
  const key = await d.ready()
  const c = await client(t, net, { rootPublicKey: key })
  const { roomName } = await c.registerRoom(crypto.randomBytes(32))
  for (let i = 0; i < 3; i++) await c.sendMessage(roomName, `sealed ${i}`)
  await c.sendMessage('lobby', 'hello')
  let synced = 0
  for await (const page of c.sync(roomName, 0)) synced += page.messages.length
  assert.equal(synced, 3)
  for await (const m of c.follow('lobby')) {
    assert.equal(m.message, 'hello')
    break
  }
  const raw = await rawPeer(t, net)
  await raw.nextOfType('root-peer-announcement')
  raw.send('not json')
  assert.equal((await raw.nextOfType('error')).code, 'BAD_FRAME')

  const res = await fetch(url + '/metrics')
  assert.equal(res.status, 200)
  const text = await res.text()
  const families = text.split('\n').filter(l => l.startsWith('# TYPE ')).length
  assert.match(text, /^root_peer_errors_total\{code="BAD_FRAME"\} 1$/m, 'the labelled series are there too')
  const { code, output } = await promtoolCheck(text)
  t.diagnostic(`promtool check metrics on ${families} metric families (${text.length} bytes): exit ${code}, output ${JSON.stringify(output)}`)
  assert.equal(output.trim(), '', 'promtool reports no problem')
  assert.equal(code, 0)
})

/** Runs in the page (as a string: the test's TypeScript has no DOM types, and tsx would add helpers the page lacks). */
const READ_PAGE = `(() => {
  const $ = id => document.getElementById(id)
  return {
    generatedAt: Number(document.body.dataset.generatedAt),
    peers: [$('peers').textContent, $('peers').dataset.value],
    rooms: [$('rooms').textContent, $('rooms').dataset.value],
    messages: [$('messages').textContent, $('messages').dataset.value],
    uptime: [$('uptime').textContent, $('uptime').dataset.value],
    health: $('health').textContent,
    rateNow: Number($('rate-now').dataset.value),
    ratePeak: Number($('rate-peak').dataset.value),
    chartPoints: Number(document.querySelector('#chart polyline')?.getAttribute('data-points') ?? 0),
    busiest: [...document.querySelectorAll('#busiest tr')].map(tr => {
      const cells = tr.querySelectorAll('td')
      return [cells[0].dataset.name, cells[1].textContent, cells[1].dataset.value]
    })
  }
})()`

const noChromium = !existsSync(CHROMIUM)
const skipBrowser = noChromium && !process.env.CI ? `${CHROMIUM} is missing (apt-get install -y chromium); CI installs it` : false
if (skipBrowser) console.log(`# skipping the status page test: ${skipBrowser}`)

test('the status page in headless Chromium renders what /stats serves, refreshes itself, and loads nothing else', { skip: skipBrowser }, async t => {
  assert.ok(!noChromium, `${CHROMIUM} is missing: .ci/run installs Debian's chromium package`)
  const net = await testnet(t)
  const { rootPeer, monitor } = await started(t, net, { sampleInterval: 250 })
  const c = await client(t, net)
  const topic = 'a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90'
  const bursts: Array<[string, number]> = [['lobby', 40], [topic, 90], ['random', 25], ['lobby', 60]]
  for (const [room, n] of bursts) {
    await Promise.all(Array.from({ length: n }, (_, i) => c.sendMessage(room, `ciphertext ${i} `.padEnd(120, '='))))
    await once(monitor, 'sample')
  }

  const userDataDir = await tmpDir(t, 'root-peer-chromium-')
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1000, height: 820 }
  })
  teardown(t, () => context.close())
  const page = context.pages()[0] ?? await context.newPage()
  const requested: string[] = []
  const served = new Map<number, MonitorStats>()
  const pageErrors: string[] = []
  const pending: Array<Promise<unknown>> = []
  page.on('request', r => requested.push(r.url()))
  page.on('pageerror', err => pageErrors.push(err.message))
  page.on('console', m => { if (m.type() === 'error') pageErrors.push(m.text()) })
  page.on('response', r => {
    if (new URL(r.url()).pathname === '/stats') pending.push(r.json().then((s: MonitorStats) => served.set(s.generatedAt, s)))
  })

  await page.goto(monitor.url + '/')
  await page.locator('body[data-generated-at]').waitFor()
  const shown = await page.evaluate(READ_PAGE) as any
  await Promise.all(pending)
  const stats = served.get(shown.generatedAt)
  assert.ok(stats !== undefined, 'the page shows a /stats answer it fetched')

  assert.deepEqual(shown.peers, [String(stats.activePeers), String(stats.activePeers)])
  assert.deepEqual(shown.rooms, [String(stats.totalRooms), String(stats.totalRooms)])
  assert.deepEqual(shown.messages, [stats.totalMessages.toLocaleString('en-US'), String(stats.totalMessages)])
  assert.equal(shown.uptime[1], String(stats.uptimeSeconds))
  assert.match(shown.uptime[0], /^\d+m \d\ds$/)
  assert.equal(shown.health, 'healthy')
  assert.deepEqual(shown.busiest, stats.busiestRooms.map(r => [r.name, r.messageCount.toLocaleString('en-US'), String(r.messageCount)]))
  const points = stats.messagesPerSecond.points
  assert.equal(shown.chartPoints, points.length)
  assert.equal(shown.rateNow, points[points.length - 1].messagesPerSecond)
  assert.equal(shown.ratePeak, Math.max(...points.map(p => p.messagesPerSecond)))
  assert.ok(shown.ratePeak > 0)

  // and they are the root peer's numbers
  assert.equal(stats.totalMessages, 215)
  assert.equal(stats.totalRooms, rootPeer.stats().totalRooms)
  assert.equal(stats.activePeers, 1)
  assert.deepEqual(shown.busiest.map((r: string[]) => r[0]), ['lobby', topic, 'random'])

  // it refreshes by itself: new messages show up without a reload
  await Promise.all(Array.from({ length: 7 }, (_, i) => c.sendMessage('random', `late ${i}`)))
  await page.locator('#messages[data-value="222"]').waitFor({ timeout: 10_000 })

  await fs.mkdir(ARTIFACTS, { recursive: true })
  await page.screenshot({ path: path.join(ARTIFACTS, 'status-page.png'), fullPage: true })

  assert.deepEqual(pageErrors, [])
  const paths = new Set(requested.map(u => {
    const url = new URL(u)
    assert.equal(url.origin, monitor.url, `the page requested only its own origin, not ${u}`)
    return url.pathname
  }))
  assert.deepEqual([...paths].sort(), ['/', '/stats'])
})
