import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import { StateFile, type PersistentState, type RoomState } from '../src/storage/state-file.js'
import { bootstrapEnv, childEnv, client, daemon, rawPeer, rootPeer, teardown, testnet, tmpDir } from './helpers.js'

// an idle daemon stops in tens of ms on a testnet, ~0.5 s on an unreachable DHT (its unannounces cut short);
// before, a peer holding its side open cost 2 s and an unreachable DHT 3 s to 9 s
const STOP_BOUND = 1500

test('offline start: the ready line comes even when the DHT cannot be reached, and SIGTERM exits 0', async t => {
  const storage = await tmpDir(t)
  const d = daemon(t, [], { STORAGE_DIR: storage, DHT_BOOTSTRAP: '127.0.0.1:1', DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' })
  const ready = await d.line(l => typeof l.msg === 'string' && l.msg.includes('ready'))
  assert.match(ready.publicKey, /^[0-9a-f]{64}$/)
  assert.ok(ready.msg.includes(ready.publicKey))
  const started = performance.now()
  const { code } = await d.stop('SIGTERM')
  const ms = Math.round(performance.now() - started)
  console.log(`idle daemon on an unreachable DHT: exit ${code} ${ms} ms after SIGTERM`)
  assert.equal(code, 0)
  assert.ok(ms < STOP_BOUND, `${ms} ms (bound ${STOP_BOUND} ms)`)
  const state = JSON.parse(await fs.readFile(path.join(storage, 'root-peer-state.json'), 'utf8'))
  assert.deepEqual(Object.keys(state).sort(), ['lastSaved', 'rooms', 'rootPeerCreatedAt', 'totalMessages'])
})

test('an idle daemon stops at once: SIGTERM with a peer connected that never ends its side exits 0 within the bound; a signal delivered twice is one', async t => {
  const net = await testnet(t)
  const env = { DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
  const d = daemon(t, [], { ...env, STORAGE_DIR: await tmpDir(t) })
  await d.ready()
  const peer = await rawPeer(t, net)
  await d.line(l => l.msg === 'peer connected')
  const ended = once(peer.conn!, 'end')
  const started = performance.now()
  const { code } = await d.stop('SIGTERM')
  const ms = Math.round(performance.now() - started)
  console.log(`idle daemon, one silent peer connected: exit ${code} ${ms} ms after SIGTERM`)
  assert.equal(code, 0)
  assert.ok(ms < STOP_BOUND, `${ms} ms (bound ${STOP_BOUND} ms)`)
  assert.ok(d.lines.some(l => l.msg === 'stopped'))
  await ended

  // npm forwards a terminal's Ctrl-C to a daemon that got it already: the drain runs once, and exits 0
  const twice = daemon(t, [], { ...env, STORAGE_DIR: await tmpDir(t) })
  await twice.ready()
  twice.child.kill('SIGINT')
  twice.child.kill('SIGINT')
  assert.equal((await twice.exited).code, 0)
  assert.ok(twice.lines.some(l => l.msg === 'stopped'))
  assert.ok(!twice.lines.some(l => l.msg === 'second signal: exiting at once'))
})

test('a restarted daemon (SIGTERM, then start again) keeps its key, every message and the state file', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
  const first = daemon(t, [], env)
  const key = await first.ready()

  const c1 = await client(t, net, { rootPublicKey: key })
  await c1.registerRoom('persist')
  const acks = await Promise.all(Array.from({ length: 25 }, (_, i) => c1.sendMessage('persist', `m${i}`)))
  assert.deepEqual(acks.map(a => a.messageIndex), Array.from({ length: 25 }, (_, i) => i))
  await c1.close()

  assert.equal((await first.stop('SIGTERM')).code, 0)
  const state = JSON.parse(await fs.readFile(path.join(storage, 'root-peer-state.json'), 'utf8'))
  assert.equal(state.rooms.persist.messageCount, 25)
  assert.equal(state.rooms.persist.name, 'persist')
  assert.equal(state.totalMessages, 25)
  const createdAt = state.rootPeerCreatedAt

  const second = daemon(t, [], env)
  assert.equal(await second.ready(), key, 'same public key after a restart')
  const c2 = await client(t, net, { rootPublicKey: key })
  const got: any[] = []
  for await (const page of c2.sync('persist', 0, { limit: 10 })) got.push(...page.messages)
  assert.deepEqual(got.map(m => m.message), Array.from({ length: 25 }, (_, i) => `m${i}`))
  assert.deepEqual(got.map(m => m.messageIndex), Array.from({ length: 25 }, (_, i) => i))
  const next = await c2.sendMessage('persist', 'after restart')
  assert.equal(next.messageIndex, 25)
  await c2.close()
  assert.equal((await second.stop('SIGTERM')).code, 0)
  const after = JSON.parse(await fs.readFile(path.join(storage, 'root-peer-state.json'), 'utf8'))
  assert.equal(after.rooms.persist.messageCount, 26)
  assert.equal(after.rootPeerCreatedAt, createdAt)
})

test('the state file is saved after every 10 messages, leaving no temp file, and counts are reconciled with the cores on start', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rp = await rootPeer(t, net, { storageDir: storage })
  const c = await client(t, net)
  const saved = once(rp, 'state-saved')
  await Promise.all(Array.from({ length: 10 }, (_, i) => c.sendMessage('counted', `m${i}`)))
  await saved
  const file = path.join(storage, 'root-peer-state.json')
  const state = JSON.parse(await fs.readFile(file, 'utf8'))
  assert.equal(state.rooms.counted.messageCount, 10)
  assert.equal(state.totalMessages, 10)
  assert.deepEqual((await fs.readdir(storage)).filter(f => f.includes('.tmp')), [], 'no temp file left behind')
  await c.close()
  await rp.close()

  // a state file behind the cores (as after a crash between saves) is corrected from the cores
  state.rooms.counted.messageCount = 3
  state.totalMessages = 3
  await fs.writeFile(file, JSON.stringify(state))
  const again = await rootPeer(t, net, { storageDir: storage })
  assert.equal(again.stats().totalMessages, 10)
  assert.equal(again.stats().busiestRooms[0].messageCount, 10)
})

test('the client reconnects to a restarted root peer and resends what was not acked', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
  const first = daemon(t, [], env)
  const key = await first.ready()
  const c = await client(t, net)
  assert.equal((await c.sendMessage('outbox', 'before')).messageIndex, 0)

  const disconnected = once(c, 'disconnect')
  assert.equal((await first.stop('SIGTERM')).code, 0)
  await disconnected
  // sent while the root peer is down: held in the outbox
  const pending = c.sendMessage('outbox', 'while down')
  assert.equal(c.unacked, 1)

  const reconnected = once(c, 'connect')
  const second = daemon(t, [], env)
  await second.ready()
  const [publicKey] = await reconnected
  assert.equal(publicKey, key)
  const ack = await pending
  assert.equal(ack.messageIndex, 1)
  assert.equal(c.unacked, 0)
  const page = await c.syncPage('outbox', 0)
  assert.deepEqual(page.messages.map(m => m.message), ['before', 'while down'])
})

/** Polls the files named in argv in a loop until its stdin ends, then prints what it read, as one JSON line. */
const READER = `
const fs = require('node:fs')
const files = process.argv.slice(1)
let reads = 0
const bad = []
const versions = new Set()
let ended = false
let started = false
process.stdin.on('end', () => { ended = true }).resume()
function poll () {
  for (let i = 0; i < 20; i++) {
    for (const file of files) {
      let text
      try {
        text = fs.readFileSync(file, 'utf8')
      } catch (err) {
        bad.push(file + ': ' + err.code)
        continue
      }
      reads++
      try {
        versions.add(file + JSON.parse(text).lastSaved)
      } catch {
        bad.push(file + ': ' + text.length + ' bytes that are not JSON')
      }
    }
  }
  if (!started) process.stdout.write('polling\\n')
  started = true
  if (ended) process.stdout.write(JSON.stringify({ reads, bad: bad.length, firstBad: bad.slice(0, 3), versions: versions.size }) + '\\n')
  else setImmediate(poll)
}
poll()
`

test('the state file is replaced atomically: a reader process polling it and its previous copy through 200 saves of a 3,000-room state only ever reads whole, valid files', async t => {
  const dir = await tmpDir(t)
  const file = new StateFile(dir)
  const rooms: Record<string, RoomState> = {}
  for (let i = 0; i < 3000; i++) rooms[`room-${i}`] = { name: `room-${i}`, messageCount: i, createdAt: 1, lastActivity: 1, byteLength: i * 100 }
  // about 0.5 MB of JSON: a write that is not atomic is seen half done
  const state = (n: number): PersistentState => ({ rooms, totalMessages: n, rootPeerCreatedAt: 1, lastSaved: n })
  await file.save(async () => state(-2))
  await file.save(async () => state(-1))

  const reader = spawn(process.execPath, ['-e', READER, file.file, file.previous], { env: childEnv(), stdio: ['pipe', 'pipe', 'inherit'] })
  teardown(t, () => { if (reader.exitCode === null) reader.kill('SIGKILL') })
  let out = ''
  reader.stdout.setEncoding('utf8').on('data', (chunk: string) => { out += chunk })
  while (!out.includes('polling')) await once(reader.stdout, 'data')
  const SAVES = 200
  for (let n = 0; n < SAVES; n++) await file.save(async () => state(n))
  reader.stdin.end()
  await once(reader, 'exit')
  const seen = JSON.parse(out.slice(out.indexOf('{')))
  console.log(`state file: ${SAVES} saves of ${Buffer.byteLength(JSON.stringify(state(0), null, 2))} bytes; the reader read ${seen.reads} times, ${seen.versions} versions of the two files, ${seen.bad} bad reads ${JSON.stringify(seen.firstBad)}`)
  assert.equal(seen.bad, 0)
  // the reads overlapped the saves: many versions of the files were read, not only the first and last
  assert.ok(seen.versions > 20, `${seen.versions} versions read`)
  assert.equal(JSON.parse(await fs.readFile(file.file, 'utf8')).lastSaved, SAVES - 1)
  assert.equal(JSON.parse(await fs.readFile(file.previous, 'utf8')).lastSaved, SAVES - 2)
  assert.deepEqual((await fs.readdir(dir)).filter(f => f.includes('.tmp')), [], 'no temp file left behind')
})
