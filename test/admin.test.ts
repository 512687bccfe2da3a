import assert from 'node:assert/strict'
import { once } from 'node:events'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'
import createTestnet, { type Testnet } from 'hyperdht/testnet.js'
import { ChatRootPeer } from '../src/root-peer.js'
import { RootPeerClient } from 'root-peer-client'
import { bootstrapEnv, client, daemon, runBin, tmpDir } from './helpers.js'

const HEX_ROOM = 'ab'.repeat(32)
/** What the fixture stores: room name, and how many messages. */
const ROOMS: Array<[string, number]> = [['lobby', 25], ['quiet', 3], [HEX_ROOM, 7]]

let net: Testnet
let work: string
/** A data dir with real stored messages (written by a real root peer, then closed). */
let source: string
let sourceKey: string
/** What the root peer served for each room before it closed: the sync content every copy must serve too. */
const served = new Map<string, any[]>()

before(async () => {
  net = await createTestnet(5, { host: '127.0.0.1' })
  work = await fs.mkdtemp(path.join(os.tmpdir(), 'root-peer-admin-'))
  source = path.join(work, 'source')
  const rp = new ChatRootPeer({ storageDir: source, bootstrap: net.bootstrap, dhtHost: '127.0.0.1', statsInterval: 0 })
  const announced = once(rp, 'discovery-announced')
  await rp.ready()
  await announced
  sourceKey = rp.publicKey!.toString('hex')
  const c = new RootPeerClient({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1', requestTimeout: 15_000 })
  await c.ready()
  for (const [room, count] of ROOMS) {
    // sizes differ, one message is a JSON object, one has no id
    await Promise.all(Array.from({ length: count }, (_, i) => c.sendMessage(room, i === 1 ? { ct: 'x'.repeat(i * 10) } : `${room}-${i}-${'y'.repeat(i)}`)))
    served.set(room, await syncAll(c, room))
  }
  await c.close()
  await rp.close()
})

after(async () => {
  await net?.destroy()
  if (work !== undefined) await fs.rm(work, { recursive: true, force: true })
})

async function syncAll (c: RootPeerClient, room: string): Promise<any[]> {
  const got: any[] = []
  for await (const page of c.sync(room, 0, { limit: 10 })) got.push(...page.messages)
  return got
}

function roomsJson (dir: string): Promise<any[]> {
  return runBin(['rooms', '--json'], { STORAGE_DIR: dir }).then(r => {
    assert.equal(r.code, 0, r.stderr)
    return JSON.parse(r.stdout)
  })
}

function daemonEnv (dir: string): Record<string, string> {
  return { STORAGE_DIR: dir, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
}

test('rooms: the table and --json show every room with what was stored, sorted as asked', async () => {
  const state = JSON.parse(await fs.readFile(path.join(source, 'root-peer-state.json'), 'utf8'))
  const json = await roomsJson(source)
  assert.deepEqual(json.map((r: any) => r.name), ROOMS.map(([name]) => name).sort())
  for (const r of json) {
    const stored = served.get(r.name)!
    assert.equal(r.messages, stored.length)
    assert.equal(r.bytes, state.rooms[r.name].byteLength)
    assert.ok(r.bytes > 0)
    assert.equal(r.createdAt, state.rooms[r.name].createdAt)
    assert.equal(r.lastActivity, state.rooms[r.name].lastActivity)
  }

  const bySize = await runBin(['rooms', '--sort', 'messages', '--json'], { STORAGE_DIR: source })
  assert.deepEqual(JSON.parse(bySize.stdout).map((r: any) => r.messages), [25, 7, 3])

  const table = await runBin(['rooms', '--sort=bytes'], { STORAGE_DIR: source })
  assert.equal(table.code, 0, table.stderr)
  assert.equal(table.stderr, '', 'no progress on a pipe')
  const lines = table.stdout.trimEnd().split('\n')
  assert.match(lines[0], /^NAME\s+MESSAGES\s+BYTES\s+CREATED\s+ACTIVE$/)
  const rows = lines.slice(1).map(l => l.split(/\s+/))
  const bytesDesc = [...json].sort((a: any, b: any) => b.bytes - a.bytes)
  assert.deepEqual(rows.map(r => r[0]), bytesDesc.map((r: any) => r.name))
  for (const [i, r] of bytesDesc.entries()) {
    assert.deepEqual(rows[i].slice(1), [String(r.messages), String(r.bytes), isoSeconds(r.createdAt), isoSeconds(r.lastActivity)])
  }
  // aligned: every row's columns start where the header's do
  assert.ok(lines.every(l => l.indexOf(' ') <= lines[0].indexOf('MESSAGES')))

  const bad = await runBin(['rooms', '--sort', 'size'], { STORAGE_DIR: source })
  assert.equal(bad.code, 2)
  assert.match(bad.stderr, /--sort/)
})

test('export then import into another data dir: a daemon there serves identical sync content', async t => {
  const target = path.join(await tmpDir(t), 'target')
  for (const [room, count] of ROOMS) {
    const exported = await runBin(['export', '--room', room], { STORAGE_DIR: source })
    assert.equal(exported.code, 0, exported.stderr)
    const lines = exported.stdout.trimEnd().split('\n')
    assert.equal(lines.length, count)
    assert.deepEqual(lines.map(l => JSON.parse(l)), served.get(room), 'each line is the stored record with its messageIndex')
    const imported = await runBin(['import', '--room', room], { STORAGE_DIR: target }, exported.stdout)
    assert.equal(imported.code, 0, imported.stderr)
    assert.match(imported.stdout, new RegExp(`imported ${count} messages`))
  }
  const tail = await runBin(['export', '--room', 'lobby', '--from', '20'], { STORAGE_DIR: source })
  assert.deepEqual(tail.stdout.trimEnd().split('\n').map(l => JSON.parse(l).messageIndex), [20, 21, 22, 23, 24])
  const unknown = await runBin(['export', '--room', 'nowhere'], { STORAGE_DIR: source })
  assert.equal(unknown.code, 1)
  assert.match(unknown.stderr, /no room "nowhere"/)

  assert.deepEqual(await roomsJson(target).then(rs => rs.map((r: any) => [r.name, r.messages, r.bytes])),
    await roomsJson(source).then(rs => rs.map((r: any) => [r.name, r.messages, r.bytes])))
  const d = daemon(t, [], daemonEnv(target))
  const key = await d.ready()
  const c = await client(t, net, { rootPublicKey: key })
  for (const [room] of ROOMS) assert.deepEqual(await syncAll(c, room), served.get(room), room)
})

test('import: a bad line is refused with its line number, and the room is left untouched', async () => {
  const before = await roomsJson(source)
  const [last] = served.get('lobby')!.slice(-1)
  const good = (i: number): string => JSON.stringify({ ...last, id: `new-${i}`, messageIndex: i })

  // into an existing room, continuing it: line 3 is not JSON
  const notJson = await runBin(['import', '--room', 'lobby'], { STORAGE_DIR: source }, [good(25), good(26), '{"message":', good(28)].join('\n') + '\n')
  assert.equal(notJson.code, 1)
  assert.match(notJson.stderr, /line 3: not JSON; nothing was imported/)

  // into an existing room, not from its length
  const wrongIndex = await runBin(['import', '--room', 'lobby'], { STORAGE_DIR: source }, good(0) + '\n')
  assert.equal(wrongIndex.code, 1)
  assert.match(wrongIndex.stderr, /line 1: messageIndex is 0, expected 25/)

  // into a new room: line 2 lacks a field
  const { storedAt: _, ...noStoredAt } = JSON.parse(good(1))
  const newRoom = await runBin(['import', '--room', 'fresh'], { STORAGE_DIR: source }, good(0) + '\n' + JSON.stringify(noStoredAt) + '\n')
  assert.equal(newRoom.code, 1)
  assert.match(newRoom.stderr, /line 2: storedAt/)

  assert.deepEqual(await roomsJson(source), before, 'no room created, no message added')
  const exported = await runBin(['export', '--room', 'lobby'], { STORAGE_DIR: source })
  assert.deepEqual(exported.stdout.trimEnd().split('\n').map(l => JSON.parse(l)), served.get('lobby'))
})

test('verify: clean on a consistent store; wrong counts are reported, --repair fixes them, and a second verify is clean', async () => {
  const clean = await runBin(['verify'], { STORAGE_DIR: source })
  assert.equal(clean.code, 0, clean.stdout + clean.stderr)
  assert.match(clean.stdout, /^consistent: 3 rooms, 35 messages$/m)

  const file = path.join(source, 'root-peer-state.json')
  const state = JSON.parse(await fs.readFile(file, 'utf8'))
  const right = structuredClone(state)
  state.rooms.lobby.messageCount = 20
  state.rooms.quiet.byteLength = 1
  state.totalMessages = 30
  await fs.writeFile(file, JSON.stringify(state))

  const wrong = await runBin(['verify'], { STORAGE_DIR: source })
  assert.equal(wrong.code, 1)
  const mismatches = wrong.stdout.split('\n').filter(l => l.startsWith('mismatch: '))
  assert.equal(mismatches.length, 3, wrong.stdout)
  assert.match(wrong.stdout, /room "lobby": the state file says 20 messages, \d+ bytes; the core has 25 messages/)
  assert.match(wrong.stdout, /room "quiet": the state file says 3 messages, 1 bytes; the core has 3 messages/)
  assert.match(wrong.stdout, /totalMessages: the state file says 30; the cores hold 35/)
  assert.equal(JSON.parse(await fs.readFile(file, 'utf8')).rooms.lobby.messageCount, 20, 'verify alone changes nothing')

  const repaired = await runBin(['verify', '--repair'], { STORAGE_DIR: source })
  assert.equal(repaired.code, 0, repaired.stdout + repaired.stderr)
  assert.match(repaired.stdout, /^repaired: /m)
  const fixed = JSON.parse(await fs.readFile(file, 'utf8'))
  for (const [room] of ROOMS) {
    assert.equal(fixed.rooms[room].messageCount, right.rooms[room].messageCount)
    assert.equal(fixed.rooms[room].byteLength, right.rooms[room].byteLength)
  }
  assert.equal(fixed.totalMessages, 35)
  assert.equal(fixed.rootPeerCreatedAt, right.rootPeerCreatedAt)

  const again = await runBin(['verify'], { STORAGE_DIR: source })
  assert.equal(again.code, 0, again.stdout)
  assert.match(again.stdout, /^consistent: /m)
})

test('backup then restore into a fresh dir: a daemon there serves everything; restore refuses a non-empty dir without --force, and --force on a dir that is not a data dir', async t => {
  const dir = await tmpDir(t)
  const archive = path.join(dir, 'backup.tar.gz')
  const backup = await runBin(['backup', '--out', archive], { STORAGE_DIR: source })
  assert.equal(backup.code, 0, backup.stderr)
  assert.match(backup.stdout, /written to/)
  assert.ok((await fs.stat(archive)).size > 0)
  assert.deepEqual((await fs.readdir(dir)).sort(), ['backup.tar.gz'], 'no temp file left')

  const restored = path.join(dir, 'restored')
  const restore = await runBin(['restore', '--from', archive], { STORAGE_DIR: restored })
  assert.equal(restore.code, 0, restore.stderr)
  assert.deepEqual(JSON.parse(await fs.readFile(path.join(restored, 'root-peer-state.json'), 'utf8')).rooms,
    JSON.parse(await fs.readFile(path.join(source, 'root-peer-state.json'), 'utf8')).rooms)

  const again = await runBin(['restore', '--from', archive], { STORAGE_DIR: restored })
  assert.equal(again.code, 1)
  assert.match(again.stderr, new RegExp(`data dir ${restored} is not empty`))
  const forced = await runBin(['restore', '--from', archive, '--force'], { STORAGE_DIR: restored })
  assert.equal(forced.code, 0, forced.stderr)
  const notArchive = await runBin(['restore', '--from', path.join(source, 'root-peer-state.json')], { STORAGE_DIR: path.join(dir, 'other') })
  assert.equal(notArchive.code, 1)
  assert.match(notArchive.stderr, /is not a root peer backup/)
  const elsewhere = path.join(dir, 'elsewhere')
  await fs.mkdir(elsewhere)
  await fs.writeFile(path.join(elsewhere, 'notes.txt'), 'keep')
  const wrongDir = await runBin(['restore', '--from', archive, '--force'], { STORAGE_DIR: elsewhere })
  assert.equal(wrongDir.code, 1)
  assert.match(wrongDir.stderr, /is not a root peer data dir/)
  assert.deepEqual(await fs.readdir(elsewhere), ['notes.txt'], '--force empties only a data dir')

  const d = daemon(t, [], daemonEnv(restored))
  const key = await d.ready()
  assert.equal(key, sourceKey, 'the key pair comes back with the data dir')
  const c = await client(t, net, { rootPublicKey: key })
  for (const [room] of ROOMS) assert.deepEqual(await syncAll(c, room), served.get(room), room)
  assert.equal((await c.sendMessage('lobby', 'after restore')).messageIndex, 25)
})

test('while a daemon holds the data dir: a second daemon exits 1 naming it, the admin commands are refused, the first keeps serving; kill -9 frees it', async t => {
  const file = path.join(source, 'root-peer-state.json')
  const first = daemon(t, [], daemonEnv(source))
  const key = await first.ready()
  const stateBefore = await fs.readFile(file)
  const statBefore = await fs.stat(file)

  const second = daemon(t, [], daemonEnv(source))
  const { code } = await second.exited
  assert.equal(code, 1)
  const fatal = second.lines.find(l => l.level === 60)
  assert.ok(fatal !== undefined, JSON.stringify(second.lines))
  assert.match(fatal.msg, new RegExp(`data dir ${source} is in use by another process`))
  assert.ok(!second.lines.some(l => typeof l.msg === 'string' && l.msg.includes('monitor listening')), 'refused before the monitor listens')

  const archive = path.join(await tmpDir(t), 'b.tar.gz')
  const refused = await Promise.all([
    runBin(['backup', '--out', archive], { STORAGE_DIR: source }),
    runBin(['restore', '--from', archive, '--force'], { STORAGE_DIR: source }),
    runBin(['import', '--room', 'lobby'], { STORAGE_DIR: source }, ''),
    runBin(['verify', '--repair'], { STORAGE_DIR: source }),
    runBin(['rooms'], { STORAGE_DIR: source })
  ])
  for (const r of refused) {
    assert.equal(r.code, 1, r.stderr)
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
    assert.ok(r.stderr.includes(`data dir ${source} is in use by another process`), r.stderr)
  }

  assert.deepEqual(await fs.readFile(file), stateBefore, 'the state file is untouched')
  assert.equal((await fs.stat(file)).mtimeMs, statBefore.mtimeMs)
  const c = await client(t, net, { rootPublicKey: key })
  assert.deepEqual(await syncAll(c, 'lobby'), served.get('lobby'))
  assert.equal((await c.sendMessage('quiet', 'still serving')).messageIndex, 3)

  // the lock dies with its process: after kill -9 the dir is free at once, and the acked message is there
  await first.stop('SIGKILL')
  const quiet = (await roomsJson(source)).find((r: any) => r.name === 'quiet')
  assert.equal(quiet.messages, 4)
})

function isoSeconds (ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z')
}
