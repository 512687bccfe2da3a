import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import http from 'node:http'
import net from 'node:net'
import path from 'node:path'
import { test, type TestContext } from 'node:test'
import { promisify } from 'node:util'
import zlib from 'node:zlib'
import type { Testnet } from 'hyperdht/testnet.js'
import { chromium } from 'playwright-core'
import * as tar from 'tar'
import { Metrics } from '../src/monitor/metrics.js'
import { Monitor, type MonitorOptions } from '../src/monitor/monitor.js'
import { roomKeyPair } from 'root-peer-client/protocol'
import { ChatRootPeer } from '../src/root-peer.js'
import { UNDER_CI, assertPresent, bootstrapEnv, client, daemon, runBin, skipUnlessCI, teardown, testnet, tmpDir } from './helpers.js'

const run = promisify(execFile)

// the daemon and the admin commands start under the usual umask here: what they write must be private anyway
process.umask(0o022)

const OFFLINE = { DHT_BOOTSTRAP: '127.0.0.1:1', DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
const TOKEN = 'c0ffee'.repeat(8)
const ROOM_KEY = Buffer.from('a room key only the members hold; the monitor must not name its room')
const CHROMIUM = '/usr/bin/chromium'

interface Found { rel: string, kind: 'dir' | 'file' | 'other', mode: number }

/** Every entry under `dir` (the dir itself as '.') with its permission bits. */
async function walk (dir: string): Promise<Found[]> {
  const found: Found[] = [{ rel: '.', kind: 'dir', mode: (await fs.stat(dir)).mode & 0o777 }]
  for (const e of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    const full = path.join(e.parentPath ?? e.path, e.name)
    const st = await fs.lstat(full)
    found.push({ rel: path.relative(dir, full), kind: st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other', mode: st.mode & 0o777 })
  }
  return found
}

/** Asserts dirs 0700 and files 0600; returns a one-line summary. */
async function assertPrivate (dir: string): Promise<string> {
  const found = await walk(dir)
  const files = found.filter(f => f.kind === 'file')
  const dirs = found.filter(f => f.kind === 'dir')
  assert.deepEqual(found.filter(f => f.kind === 'other'), [], 'only files and dirs')
  assert.deepEqual(dirs.filter(d => d.mode !== 0o700).map(d => `${d.rel} ${d.mode.toString(8)}`), [], 'every dir 0700')
  assert.deepEqual(files.filter(f => f.mode !== 0o600).map(f => `${f.rel} ${f.mode.toString(8)}`), [], 'every file 0600')
  return `checked ${files.length} files and ${dirs.length} dirs: files all 0600, dirs all 0700`
}

test('under umask 022 the daemon makes its data dir 0700 and every file 0600; a backup the admin command writes is 0600, and so is what restore unpacks', async t => {
  const mask = process.umask(0o022)
  const probe = path.join(await tmpDir(t), 'probe')
  await fs.writeFile(probe, 'x')
  t.diagnostic(`the test process and its children start with umask 0${mask.toString(8).padStart(3, '0')}: a file the test writes is ${((await fs.stat(probe)).mode & 0o777).toString(8)}`)

  const tnet = await testnet(t)
  const base = await tmpDir(t)
  const storage = path.join(base, 'data')
  const d = daemon(t, [], { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(tnet), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' })
  await d.ready()
  const c = await client(t, tnet)
  for (let i = 0; i < 12; i++) await c.sendMessage('lobby', `ciphertext ${i}`, { id: `m${i}` })
  await c.close()
  assert.equal((await d.stop()).code, 0)
  assert.ok(!d.lines.some(l => l.level === 40 && /open to other users/.test(l.msg)), 'a data dir the daemon made itself needs no warning')
  const top = await fs.readdir(storage)
  assert.ok(top.includes('root-peer-state.json') && top.includes('CORESTORE') && top.includes('db'), top.join(', '))
  t.diagnostic(`data dir ${top.sort().join(', ')}: ${await assertPrivate(storage)}`)

  // a loose file left from before (a state file written by an older version) does not make the new one loose
  const out = path.join(base, 'backup.tar.gz')
  await fs.writeFile(out, 'an older backup, world-readable')
  await fs.chmod(out, 0o644)
  const backup = await runBin(['backup', '--out', out], { STORAGE_DIR: storage })
  assert.equal(backup.code, 0, backup.stderr)
  const archiveMode = (await fs.stat(out)).mode & 0o777
  assert.equal(archiveMode, 0o600)
  t.diagnostic(`backup archive written over a 0644 file: mode ${archiveMode.toString(8)}`)

  const restored = path.join(base, 'restored')
  const restore = await runBin(['restore', '--from', out], { STORAGE_DIR: restored })
  assert.equal(restore.code, 0, restore.stderr)
  t.diagnostic(`restored dir: ${await assertPrivate(restored)}`)
})

test('start warnings: a data dir others can read gets one line naming it and its mode, and is made private; a monitor beyond loopback without MONITOR_TOKEN gets one line', async t => {
  const storage = path.join(await tmpDir(t), 'data')
  await fs.mkdir(storage)
  await fs.chmod(storage, 0o755)
  await fs.writeFile(path.join(storage, 'root-peer-state.json'), JSON.stringify({ rooms: {}, totalMessages: 0, rootPeerCreatedAt: 0, lastSaved: 0 }))
  await fs.chmod(path.join(storage, 'root-peer-state.json'), 0o644)

  const d = daemon(t, [], { ...OFFLINE, STORAGE_DIR: storage, HOST: '0.0.0.0' })
  await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  const dirWarnings = d.lines.filter(l => l.level === 40 && typeof l.msg === 'string' && l.msg.includes(storage))
  assert.equal(dirWarnings.length, 1, JSON.stringify(dirWarnings))
  assert.equal(dirWarnings[0].mode, '0755')
  assert.match(dirWarnings[0].msg, new RegExp(`data dir ${storage} was open to other users \\(mode 0755, and 1 entry in it\\)`))
  t.diagnostic(`data dir warning: ${dirWarnings[0].msg}`)
  const hostWarnings = d.lines.filter(l => l.level === 40 && /MONITOR_TOKEN/.test(l.msg))
  assert.equal(hostWarnings.length, 1, JSON.stringify(hostWarnings))
  t.diagnostic(`monitor warning: ${hostWarnings[0].msg}`)
  assert.equal(((await fs.stat(storage)).mode & 0o777), 0o700, 'made private at start')
  assert.equal(((await fs.stat(path.join(storage, 'root-peer-state.json'))).mode & 0o777), 0o600)
  assert.equal((await d.stop()).code, 0)

  // again, private now and with a token: no warning; the daemon passes MONITOR_HOSTS and MONITOR_TOKEN to its monitor
  const again = daemon(t, [], { ...OFFLINE, STORAGE_DIR: storage, HOST: '0.0.0.0', MONITOR_TOKEN: TOKEN, MONITOR_HOSTS: 'monitor.example' })
  const { url } = await again.line(l => typeof l.msg === 'string' && l.msg.startsWith('monitor listening on '))
  await again.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  assert.deepEqual(again.lines.filter(l => l.level === 40).map(l => l.msg).filter(m => /open to other users|MONITOR_TOKEN/.test(m)), [])
  const port = Number(new URL(url).port)
  const answers = {
    attacker: (await get(port, '/health', { host: 'attacker.example' })).status,
    listedNoToken: (await get(port, '/stats', { host: 'monitor.example' })).status,
    listedToken: (await get(port, '/stats', { host: `monitor.example:${port}`, authorization: `Bearer ${TOKEN}` })).status,
    health: (await get(port, '/health', { host: 'monitor.example' })).status
  }
  t.diagnostic(`daemon with HOST=0.0.0.0, MONITOR_HOSTS, MONITOR_TOKEN: ${JSON.stringify(answers)}`)
  assert.deepEqual(answers, { attacker: 421, listedNoToken: 401, listedToken: 200, health: 503 })
})

interface Answer { status: number, body: string, headers: http.IncomingHttpHeaders }

/** A GET to the monitor on 127.0.0.1 with the headers given (a `host` of our choosing included). */
function get (port: number, pathname: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: pathname, agent: false, headers: { host: `127.0.0.1:${port}`, ...headers } }, res => {
      let body = ''
      res.setEncoding('utf8').on('data', (chunk: string) => { body += chunk }).on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** Raw bytes to the monitor; what it answers before closing. */
async function rawHttp (port: number, request: string): Promise<string> {
  const socket = net.connect(port, '127.0.0.1')
  let answer = ''
  socket.setEncoding('utf8').on('data', (chunk: string) => { answer += chunk })
  socket.on('error', () => {})
  socket.write(request)
  await once(socket, 'close')
  return answer
}

/** Metrics, a root peer on the testnet and its monitor, as bin.ts makes them; started and announced. */
async function monitored (t: TestContext, tnet: Testnet, opts: Partial<MonitorOptions> = {}): Promise<{ rootPeer: ChatRootPeer, monitor: Monitor }> {
  const metrics = new Metrics()
  const rootPeer = new ChatRootPeer({ storageDir: await tmpDir(t), bootstrap: tnet.bootstrap, dhtHost: '127.0.0.1', statsInterval: 0, onLatency: metrics.onLatency })
  metrics.attach(rootPeer)
  const monitor = new Monitor(rootPeer, { metrics, port: 0, ...opts })
  teardown(t, () => rootPeer.close())
  teardown(t, () => monitor.close())
  const announced = once(rootPeer, 'discovery-announced')
  await monitor.ready()
  await rootPeer.ready()
  await announced
  return { rootPeer, monitor }
}

test('the monitor answers only its own address: a host name it was not given is refused with 421, IP addresses, localhost and MONITOR_HOSTS names are answered', async t => {
  const tnet = await testnet(t)
  const { monitor } = await monitored(t, tnet, { hosts: ['monitor.example'] })
  const port = monitor.port
  const cases: Array<[string, number]> = [
    ['attacker.example', 421],
    [`attacker.example:${port}`, 421],
    ['127.0.0.1.nip.io', 421],
    ['localhost.attacker.example', 421],
    ['monitor.example.attacker.example', 421],
    [`127.0.0.1:${port}`, 200],
    ['127.0.0.1', 200],
    ['localhost', 200],
    [`LocalHost:${port}`, 200],
    [`[::1]:${port}`, 200],
    ['10.1.2.3:80', 200],
    ['monitor.example', 200],
    [`Monitor.Example:${port}`, 200]
  ]
  const seen: string[] = []
  for (const [host, want] of cases) {
    const answer = await get(port, '/stats', { host })
    seen.push(`${host} ${answer.status}`)
    assert.equal(answer.status, want, host)
    if (want === 421) {
      assert.match(answer.headers['content-type'] ?? '', /^text\/plain/)
      assert.ok(answer.body.length < 200 && !answer.body.includes('publicKey'), answer.body)
    }
  }
  const http10 = await rawHttp(port, 'GET /stats HTTP/1.0\r\n\r\n')
  assert.match(http10, /^HTTP\/1\.1 421 /, 'no Host header (HTTP/1.0): refused')
  seen.push(`(none, HTTP/1.0) ${http10.slice(9, 12)}`)
  assert.equal((await get(port, '/health', { host: 'attacker.example' })).status, 421, '/health too')
  t.diagnostic(`Host -> status: ${seen.join('; ')}`)
})

test('MONITOR_TOKEN: every endpoint but /health needs the bearer token (the status page also takes ?token=); signed rooms are named nowhere, nor their writer keys', async t => {
  const tnet = await testnet(t)
  const { rootPeer, monitor } = await monitored(t, tnet, { token: TOKEN, sampleInterval: 250 })
  const port = monitor.port
  const c = await client(t, tnet)
  const { roomName: signed } = await c.registerRoom(ROOM_KEY)
  const writerKey = roomKeyPair(ROOM_KEY).publicKey.toString('hex')
  for (let i = 0; i < 5; i++) await c.sendMessage(signed, `signed ciphertext ${i}`, { id: `s${i}` })
  for (let i = 0; i < 3; i++) await c.sendMessage('lobby', `ciphertext ${i}`)
  assert.ok(rootPeer.stats().busiestRooms.some(r => r.name === signed), 'the stats event (operator logs) still names it')

  const bearer = { authorization: `Bearer ${TOKEN}` }
  const wrong = { authorization: `Bearer ${TOKEN.slice(0, -1)}0` }
  const statuses: Record<string, number> = {
    'GET /stats': (await get(port, '/stats')).status,
    'GET /stats wrong token': (await get(port, '/stats', wrong)).status,
    'GET /stats Basic': (await get(port, '/stats', { authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` })).status,
    'GET /stats?token=': (await get(port, `/stats?token=${TOKEN}`)).status,
    'GET /stats token': (await get(port, '/stats', bearer)).status,
    'GET /metrics': (await get(port, '/metrics')).status,
    'GET /metrics token': (await get(port, '/metrics', bearer)).status,
    'GET /': (await get(port, '/')).status,
    'GET /?token=wrong': (await get(port, '/?token=wrong')).status,
    'GET /?token=': (await get(port, `/?token=${TOKEN}`)).status,
    'GET / token': (await get(port, '/', bearer)).status,
    'GET /nope': (await get(port, '/nope')).status,
    'GET /health': (await get(port, '/health')).status
  }
  t.diagnostic(`with MONITOR_TOKEN: ${JSON.stringify(statuses)}`)
  assert.deepEqual(statuses, {
    'GET /stats': 401,
    'GET /stats wrong token': 401,
    'GET /stats Basic': 401,
    'GET /stats?token=': 401,
    'GET /stats token': 200,
    'GET /metrics': 401,
    'GET /metrics token': 200,
    'GET /': 401,
    'GET /?token=wrong': 401,
    'GET /?token=': 200,
    'GET / token': 200,
    'GET /nope': 401,
    'GET /health': 200
  })
  const refused = await get(port, '/stats')
  assert.match(refused.headers['www-authenticate'] ?? '', /^Bearer /)
  assert.ok(!refused.body.includes('lobby'))

  const stats = JSON.parse((await get(port, '/stats', bearer)).body)
  const metrics = (await get(port, '/metrics', bearer)).body
  const health = (await get(port, '/health')).body
  assert.equal(stats.totalRooms, 2, 'the totals count the signed room')
  assert.equal(stats.totalMessages, 8)
  assert.deepEqual(stats.busiestRooms.map((r: any) => [r.name, r.messageCount]), [['lobby', 3]])
  assert.match(metrics, /^root_peer_room_bytes\{room="lobby"\} \d+$/m)
  assert.equal([...metrics.matchAll(/^root_peer_room_bytes\{/gm)].length, 1)
  for (const [what, text] of [['/stats', JSON.stringify(stats)], ['/metrics', metrics], ['/health', health]]) {
    assert.ok(!text.includes(signed), `${what} does not name the signed room`)
    assert.ok(!text.includes(writerKey), `${what} does not show its writer key`)
  }
  t.diagnostic(`/stats busiestRooms ${JSON.stringify(stats.busiestRooms.map((r: any) => r.name))} of ${stats.totalRooms} rooms; /metrics room_bytes series: ${[...metrics.matchAll(/^root_peer_room_bytes\{room="([^"]*)"\}/gm)].map(m => m[1]).join(', ')}`)

  await statusPage(t, monitor.url, signed, writerKey)
})

/** The status page opened with ?token= in headless Chromium: it reads /stats with the token and shows no signed room. */
async function statusPage (t: TestContext, url: string, signed: string, writerKey: string): Promise<void> {
  if (!existsSync(CHROMIUM)) {
    assert.ok(!UNDER_CI, `${CHROMIUM} is missing: .ci/run must provide it (apt-get install -y chromium)`)
    t.diagnostic(`${CHROMIUM} is missing: the status page was not opened in a browser`)
    return
  }
  const context = await chromium.launchPersistentContext(await tmpDir(t, 'root-peer-chromium-'), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  teardown(t, () => context.close())
  const page = context.pages()[0] ?? await context.newPage()
  const statsAnswers: number[] = []
  const bodies: string[] = []
  page.on('response', r => {
    if (new URL(r.url()).pathname === '/stats') {
      statsAnswers.push(r.status())
      bodies.push('')
      r.text().then(b => { bodies[bodies.length - 1] = b }, () => {})
    }
  })
  await page.goto(`${url}/?token=${TOKEN}`)
  await page.locator('body[data-generated-at]').waitFor()
  const shown = await page.evaluate(`[...document.querySelectorAll('#busiest td.name')].map(td => td.dataset.name)`) as string[]
  const text = await page.evaluate('document.body.innerText') as string
  assert.deepEqual(shown, ['lobby'])
  assert.ok(!text.includes(signed) && !text.includes(writerKey))
  assert.ok(statsAnswers.length > 0 && statsAnswers.every(s => s === 200), JSON.stringify(statsAnswers))
  t.diagnostic(`status page with ?token=: /stats answered ${JSON.stringify(statsAnswers)}, busiest rooms shown ${JSON.stringify(shown)}`)
}

// ---- restore ----

interface TarSpec { name: string, type: string, body?: Buffer, linkname?: string, size?: number, pax?: Record<string, string> }

/** One ustar header block (and a pax header before it when `pax` is given), then the body padded to 512. */
function tarEntry ({ name, type, body = Buffer.alloc(0), linkname = '', size, pax }: TarSpec): Buffer {
  const header = Buffer.alloc(512)
  const octal = (n: number, len: number): string => n.toString(8).padStart(len - 1, '0') + '\0'
  header.write(name, 0, 100)
  header.write(octal(type === '5' ? 0o755 : 0o644, 8), 100)
  header.write(octal(0, 8), 108)
  header.write(octal(0, 8), 116)
  header.write(octal(size ?? body.length, 12), 124)
  header.write(octal(1_700_000_000, 12), 136)
  header.write('        ', 148)
  header.write(type, 156)
  header.write(linkname, 157, 100)
  header.write('ustar\0', 257)
  header.write('00', 263)
  let sum = 0
  for (const b of header) sum += b
  header.write(sum.toString(8).padStart(6, '0') + '\0 ', 148)
  const padded = Buffer.concat([header, body, Buffer.alloc((512 - body.length % 512) % 512)])
  if (pax === undefined) return padded
  const records = Object.entries(pax).map(([k, v]) => {
    const rest = ` ${k}=${v}\n`
    let len = rest.length + 1
    while (String(len).length + rest.length > len) len++
    return `${len}${rest}`
  }).join('')
  return Buffer.concat([tarEntry({ name: 'PaxHeader', type: 'x', body: Buffer.from(records) }), padded])
}

/** A .tar.gz of `dir`'s files and dirs (entry by entry, as a backup holds them), then `extra` entries. */
async function craftArchive (file: string, dir: string, extra: TarSpec[], patch: Record<string, Buffer> = {}): Promise<void> {
  const blocks: Buffer[] = []
  for (const f of (await walk(dir)).filter(f => f.rel !== '.').sort((a, b) => a.rel < b.rel ? -1 : 1)) {
    if (f.kind === 'dir') blocks.push(tarEntry({ name: f.rel + '/', type: '5' }))
    else blocks.push(tarEntry({ name: f.rel, type: '0', body: patch[f.rel] ?? await fs.readFile(path.join(dir, f.rel)) }))
  }
  for (const e of extra) blocks.push(tarEntry(e))
  blocks.push(Buffer.alloc(1024))
  await fs.writeFile(file, zlib.gzipSync(Buffer.concat(blocks)))
}

function ndjson (n: number, prefix: string): string {
  return Array.from({ length: n }, (_, i) => JSON.stringify({ message: `${prefix} ${i}`, storedAt: 1_700_000_000_000 + i, fromPeer: 'ab'.repeat(32), senderPublicKey: 'cd'.repeat(32), id: `${prefix}-${i}`, messageIndex: i })).join('\n') + '\n'
}

test('restore --force checks every entry before touching the data dir: symlinks, hard links, devices, ../ and absolute paths, oversized entries and truncated archives are refused with one line, and the old room stays', async t => {
  const base = await tmpDir(t)
  const data = path.join(base, 'data')
  const env = { STORAGE_DIR: data }
  const imported = await runBin(['import', '--room', 'lobby'], env, ndjson(25, 'lobby'))
  assert.equal(imported.code, 0, imported.stderr)
  const before = (await runBin(['export', '--room', 'lobby'], env)).stdout
  assert.equal(before.trim().split('\n').length, 25)

  const good = path.join(base, 'good.tar.gz')
  assert.equal((await runBin(['backup', '--out', good], env)).code, 0)
  const staging = path.join(base, 'staging')
  await fs.mkdir(staging)
  await tar.extract({ file: good, cwd: staging })
  const outside = path.join(base, 'outside')
  await fs.mkdir(outside)

  const bad: Array<[string, TarSpec[]]> = [
    ['a symlink out of the dir, then a file through it', [{ name: 'db/escape', type: '2', linkname: outside }, { name: 'db/escape/pwned', type: '0', body: Buffer.from('pwned') }]],
    ['a hard link to a file outside', [{ name: 'db/hard', type: '1', linkname: '/etc/hostname' }]],
    ['a character device', [{ name: 'db/tty', type: '3' }]],
    ['a ../ path', [{ name: '../../../pwned-dotdot', type: '0', body: Buffer.from('pwned') }]],
    ['an absolute path', [{ name: path.join(outside, 'pwned-absolute'), type: '0', body: Buffer.from('pwned') }]],
    ['a file that is not part of a data dir', [{ name: '.bashrc', type: '0', body: Buffer.from('pwned') }]],
    ['an entry declaring 1 TiB (pax size)', [{ name: 'db/huge', type: '0', pax: { size: String(1024 ** 4) } }]]
  ]
  const refusals: string[] = []
  for (const [what, extra] of bad) {
    const file = path.join(base, `bad-${refusals.length}.tar.gz`)
    await craftArchive(file, staging, extra)
    refusals.push(await refusedIntact(t, what, file, env, before))
  }

  const truncated = path.join(base, 'truncated.tar.gz')
  const bytes = await fs.readFile(good)
  await fs.writeFile(truncated, bytes.subarray(0, Math.floor(bytes.length * 0.6)))
  refusals.push(await refusedIntact(t, `the good backup cut to 60% (${Math.floor(bytes.length * 0.6)} of ${bytes.length} bytes)`, truncated, env, before))

  assert.ok(!existsSync(path.join(base, 'pwned-dotdot')) && (await fs.readdir(outside)).length === 0, 'nothing was written outside')
  assert.ok(refusals.every(r => r.includes('is not a root peer backup')), refusals.join('\n'))
})

const notRoot = process.getuid?.() === 0 ? null : 'root (to mount a small tmpfs)'
test('restore refuses an archive whose files outweigh the free space of the data dir\'s disk, before it creates anything', { skip: skipUnlessCI(notRoot) }, async t => {
  assertPresent(notRoot)
  const base = await tmpDir(t)
  const source = path.join(base, 'source')
  assert.equal((await runBin(['import', '--room', 'lobby'], { STORAGE_DIR: source }, ndjson(5, 'lobby'))).code, 0)
  const good = path.join(base, 'good.tar.gz')
  assert.equal((await runBin(['backup', '--out', good], { STORAGE_DIR: source })).code, 0)
  const staging = path.join(base, 'staging')
  await fs.mkdir(staging)
  await tar.extract({ file: good, cwd: staging })
  const big = path.join(base, 'big.tar.gz')
  // random bytes: the archive is as large as what it unpacks to
  await craftArchive(big, staging, [{ name: 'db/000999.sst', type: '0', body: crypto.randomBytes(12 * 1024 * 1024) }])

  const disk = path.join(base, 'disk')
  await fs.mkdir(disk)
  await run('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', disk])
  teardown(t, () => run('umount', ['-l', disk]))
  const target = path.join(disk, 'data')
  const r = await runBin(['restore', '--from', big], { STORAGE_DIR: target })
  assert.equal(r.code, 1, r.stderr)
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
  assert.ok(!r.stderr.includes('    at '), r.stderr)
  assert.match(r.stderr, /holds more than 12\.\d MiB, and the disk of .* has 1\d\.\d MiB free/)
  assert.ok(!existsSync(target), 'the data dir was not created')
  t.diagnostic(`a 12 MiB file for a 16 MiB disk: exit ${r.code}: ${r.stderr.trim()}`)
})

test('restore --force that fails mid-way leaves the old data in place: a backup whose store does not open, and a file of the old dir that cannot be moved aside; a good one then replaces the dir', async t => {
  const base = await tmpDir(t)
  const data = path.join(base, 'data')
  const env = { STORAGE_DIR: data }
  assert.equal((await runBin(['import', '--room', 'lobby'], env, ndjson(25, 'lobby'))).code, 0)
  const before = (await runBin(['export', '--room', 'lobby'], env)).stdout

  const otherDir = path.join(base, 'other')
  assert.equal((await runBin(['import', '--room', 'other'], { STORAGE_DIR: otherDir }, ndjson(7, 'other'))).code, 0)
  const other = path.join(base, 'other.tar.gz')
  assert.equal((await runBin(['backup', '--out', other], { STORAGE_DIR: otherDir })).code, 0)

  // every entry is a plain file or dir and the sizes fit, so it is unpacked; its RocksDB names a manifest it lacks
  const staging = path.join(base, 'staging')
  await fs.mkdir(staging)
  await tar.extract({ file: other, cwd: staging })
  const corrupt = path.join(base, 'corrupt.tar.gz')
  await craftArchive(corrupt, staging, [], { 'db/CURRENT': Buffer.from('MANIFEST-999999\n') })
  const line = await refusedIntact(t, 'a backup whose db/CURRENT names a missing manifest', corrupt, env, before)
  assert.match(line, /its store does not open/)

  // the new contents are unpacked and opened; moving the old ones aside stops at one the kernel will not move
  const pinned = path.join(data, 'root-peer-state.json')
  const pin = await run('chattr', ['+i', pinned]).then(() => true, () => false)
  if (pin) {
    teardown(t, () => run('chattr', ['-i', pinned]).catch(() => {}))
    const moved = await refusedIntact(t, 'a good backup over a dir whose state file is immutable (chattr +i: EPERM on rename)', other, env, before, () => run('chattr', ['-i', pinned]))
    assert.match(moved, /EPERM|not permitted/)
  } else {
    assert.ok(!UNDER_CI, 'chattr +i is not possible here (root and e2fsprogs\' chattr): .ci/run must provide it')
    t.diagnostic('chattr +i is not possible here: the failure while moving the old contents aside was not provoked')
  }

  const restored = await runBin(['restore', '--from', other, '--force'], env)
  assert.equal(restored.code, 0, restored.stderr)
  const rooms = JSON.parse((await runBin(['rooms', '--json'], env)).stdout)
  assert.deepEqual(rooms.map((r: any) => [r.name, r.messages]), [['other', 7]])
  assert.deepEqual((await fs.readdir(data)).filter(f => f.startsWith('.restore-')), [])
  t.diagnostic(`good restore --force: ${restored.stdout.trim()}; rooms now ${JSON.stringify(rooms.map((r: any) => r.name))}; ${await assertPrivate(data)}`)
})

/** Runs restore --force of `file` over the data dir: exit 1, one stderr line without a stack, the room as it was, no work dir left. */
async function refusedIntact (t: TestContext, what: string, file: string, env: Record<string, string>, before: string, after: () => Promise<unknown> = async () => {}): Promise<string> {
  const r = await runBin(['restore', '--from', file, '--force'], env)
  await after()
  const lines = r.stderr.trim().split('\n')
  assert.equal(r.code, 1, `${what}: ${r.stderr}`)
  assert.equal(lines.length, 1, `${what}: one line: ${r.stderr}`)
  assert.ok(!r.stderr.includes('    at '), `${what}: no stack trace: ${r.stderr}`)
  assert.match(lines[0], /^root-peer restore: /)
  assert.deepEqual((await fs.readdir(env.STORAGE_DIR)).filter(f => f.startsWith('.restore-')), [], `${what}: no work dir left`)
  const after2 = await runBin(['export', '--room', 'lobby'], env)
  assert.equal(after2.code, 0, after2.stderr)
  assert.equal(after2.stdout, before, `${what}: the room reads back the same`)
  t.diagnostic(`${what}: exit ${r.code}, room intact (25 messages): ${lines[0]}`)
  return lines[0]
}
