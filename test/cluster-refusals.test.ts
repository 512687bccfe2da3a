import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { Testnet } from 'hyperdht/testnet.js'
import { readPublicKey } from '../src/cluster/cluster.js'
import { bootstrapEnv, dial, memberConnected, metricAt, readUntil, roomOwnedBy, runBin, sendAll, startCluster, startMember, testnet, tmpDir, type Member } from './helpers.js'

/** What a cluster refuses, as docs/cluster.md and docs/configuration.md promise it. */

/** Two members, each with settings of its own, linked to each other. */
async function twoMembers (t: any, net: Testnet, extraA: Record<string, string>, extraB: Record<string, string>): Promise<Member[]> {
  const storages = [await tmpDir(t, 'root-peer-cluster-'), await tmpDir(t, 'root-peer-cluster-')]
  const keys = [await readPublicKey(storages[0]), await readPublicKey(storages[1])]
  const a = startMember(t, net, storages[0], keys, keys[0], extraA)
  await a.d.ready()
  const b = startMember(t, net, storages[1], keys, keys[1], extraB)
  await b.d.ready()
  await Promise.all([memberConnected(a.d, b.key), memberConnected(b.d, a.key)])
  return [a, b]
}

test('MIN_MIRRORS above the number of CLUSTER_PEERS (2 with one peer, 1 with none, as env or flag): exit 2 before starting, with one line on stderr naming MIN_MIRRORS', async t => {
  const storage = await tmpDir(t)
  const peer = await readPublicKey(await tmpDir(t))
  const base = { STORAGE_DIR: storage, DHT_BOOTSTRAP: '127.0.0.1:1', DHT_HOST: '127.0.0.1' }
  const cases: Array<{ args: string[], env: Record<string, string>, peers: number, minMirrors: number }> = [
    { args: [], env: { CLUSTER_PEERS: peer, MIN_MIRRORS: '2' }, peers: 1, minMirrors: 2 },
    { args: [], env: { MIN_MIRRORS: '1' }, peers: 0, minMirrors: 1 },
    { args: ['--cluster-peers', peer, '--min-mirrors', '2'], env: {}, peers: 1, minMirrors: 2 }
  ]
  for (const { args, env, peers, minMirrors } of cases) {
    const run = await runBin(args, { ...base, ...env })
    assert.equal(run.code, 2, run.stderr)
    const lines = run.stderr.trimEnd().split('\n')
    assert.equal(lines.length, 1, run.stderr)
    assert.match(lines[0], new RegExp(`MIN_MIRRORS\\): ${minMirrors} is more than the ${peers} other root peers in CLUSTER_PEERS`))
    assert.equal(run.stdout, '', 'the daemon did not start (no log line)')
  }
})

test('MAX_STORAGE_BYTES counts mirrored rooms: a member whose own room holds less than its cap, once it mirrors another member\'s room past the cap, refuses messages with STORAGE_FULL (maxStorageBytes) for its own room and for the mirrored one, and stores neither; the primary without a cap still acks', async t => {
  const CAP = 4096
  const net = await testnet(t)
  const [a, b] = await twoMembers(t, net, { MIN_MIRRORS: '1' }, { MIN_MIRRORS: '1', MAX_STORAGE_BYTES: String(CAP) })
  const own = roomOwnedBy([a, b], b, 'capped')
  const mirrored = roomOwnedBy([a, b], a, 'big')
  const atA = await dial(t, net, a)
  const atB = await dial(t, net, b)

  // B's own room: one message, stored under the cap
  atB.send({ type: 'message', roomName: own, message: 'small', id: 'own-0' })
  assert.equal((await atB.next(f => f.id === 'own-0')).type, 'message-ack')
  const ownBytes = await metricAt(b, 'root_peer_stored_bytes')
  assert.ok(ownBytes > 0 && ownBytes < CAP, `B holds ${ownBytes} bytes of its own, below its cap`)

  // A's room, 40 messages of 300 characters: acked with MIN_MIRRORS=1, so B stored each; B now holds more than its cap
  const ids = Array.from({ length: 40 }, (_, i) => `big-${i}`)
  for (const id of ids) atA.send({ type: 'message', roomName: mirrored, message: 'x'.repeat(300), id })
  for (const id of ids) assert.equal((await atA.next(f => f.id === id, 30_000)).type, 'message-ack', id)
  // the byte count follows the mirrored copy as it is stored: read until it has counted it all
  const deadline = Date.now() + 20_000
  let held = ownBytes
  while ((held = await metricAt(b, 'root_peer_stored_bytes')) < CAP) {
    assert.ok(Date.now() < deadline, `B counted ${held} bytes, its mirrored room not yet`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }

  for (const [room, id] of [[own, 'own-1'], [mirrored, 'big-at-b']]) {
    atB.send({ type: 'message', roomName: room, message: 'over the cap', id })
    const refused = await atB.next(f => f.id === id)
    assert.equal(refused.type, 'error', JSON.stringify(refused))
    assert.equal(refused.code, 'STORAGE_FULL')
    assert.equal(refused.maxStorageBytes, CAP)
  }
  // A has no cap: its room goes on; nothing refused at B was stored at either member
  const after = (await sendAll(atA, mirrored, ['big-40'])).get('big-40')
  assert.deepEqual(after, { type: 'message-ack', roomName: mirrored, id: 'big-40', messageIndex: ids.length })
  assert.deepEqual((await atB.syncAll(own)).messages.map(m => m.id), ['own-0'])
  assert.deepEqual((await readUntil(t, net, b, mirrored, ids.length + 1)).map(m => m.id), [...ids, 'big-40'])
})

test('a new room whose rendezvous owner is down (kill -9): register-room and a first message for it at the other member get PRIMARY_UNAVAILABLE and create no room there, while a new room it owns itself is created; once the owner is back, both rooms are created at it and the first message gets index 0', async t => {
  const net = await testnet(t)
  const [a, b] = await twoMembers(t, net, {}, {})
  const registered = roomOwnedBy([a, b], a, 'orphan-registered')
  const written = roomOwnedBy([a, b], a, 'orphan-written')
  const atB = await dial(t, net, b)

  a.d.child.kill('SIGKILL')
  await a.d.exited
  await b.d.line(l => l.msg.startsWith('cluster member disconnected') && l.member === a.key, 30_000)
  const roomsBefore = await metricAt(b, 'root_peer_rooms')

  atB.send({ type: 'register-room', roomName: registered, requestId: 'reg' })
  const regRefused = await atB.next(f => f.requestId === 'reg', 15_000)
  assert.equal(regRefused.type, 'error', JSON.stringify(regRefused))
  assert.equal(regRefused.code, 'PRIMARY_UNAVAILABLE')
  atB.send({ type: 'message', roomName: written, message: 'first', id: 'first' })
  const msgRefused = await atB.next(f => f.id === 'first', 15_000)
  assert.equal(msgRefused.type, 'error', JSON.stringify(msgRefused))
  assert.equal(msgRefused.code, 'PRIMARY_UNAVAILABLE')
  assert.equal(await metricAt(b, 'root_peer_rooms'), roomsBefore, 'no room was created at B')

  // B's own new room is not refused: the refusals are for the owner being down
  const mine = roomOwnedBy([a, b], b, 'mine')
  atB.send({ type: 'register-room', roomName: mine, requestId: 'mine' })
  assert.equal((await atB.next(f => f.requestId === 'mine', 15_000)).type, 'room-registered')

  // A back on its data dir: the same frames at B create both rooms at A
  const fromB = b.d.lines.length
  const a2 = startMember(t, net, a.storage, [a.key, b.key], a.key, {})
  await a2.d.ready()
  await memberConnected(b.d, a.key, fromB)
  // as a client does: PRIMARY_UNAVAILABLE is retried (the two members' dials may cross as A starts, and the link
  // B saw first may be replaced by the other: a write in that moment is refused, not stored)
  const answered = async (frame: Record<string, unknown>, match: (f: any) => boolean): Promise<any> => {
    for (let tries = 0; ; tries++) {
      atB.send(frame)
      const answer = await atB.next(match, 15_000)
      if (answer.code !== 'PRIMARY_UNAVAILABLE' || tries === 10) return answer
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }
  assert.equal((await answered({ type: 'register-room', roomName: registered, requestId: 'reg-2' }, f => f.requestId === 'reg-2')).type, 'room-registered')
  const ack = await answered({ type: 'message', roomName: written, message: 'first', id: 'first' }, f => f.id === 'first')
  assert.deepEqual({ ...ack, duplicate: undefined }, { type: 'message-ack', roomName: written, id: 'first', messageIndex: 0, duplicate: undefined })
  assert.ok(b.d.lines.some(l => l.msg === 'mirroring room' && l.roomName === registered && l.primary === a.key), `B mirrors ${registered} from A`)
  assert.deepEqual((await readUntil(t, net, a2, written, 1)).map(m => m.id), ['first'])
})

test('promote refuses (exit 1, "could not fetch this room\'s blocks from every other member") when another member in CLUSTER_PEERS does not answer, and takes nothing over: run again once that member answers, it takes the room over with every message', async t => {
  const net = await testnet(t)
  const members = await startCluster(t, net, { MIN_MIRRORS: '1' })
  const [a, b, c] = members
  const room = roomOwnedBy(members, a, 'promote-refused')
  const atA = await dial(t, net, a)
  const ids = Array.from({ length: 10 }, (_, i) => `m-${i}`)
  for (const [id, ack] of await sendAll(atA, room, ids)) assert.equal(ack.type, 'message-ack', `${id}: ${JSON.stringify(ack)}`)
  for (const m of [b, c]) assert.deepEqual((await readUntil(t, net, m, room, ids.length)).map(x => x.id), ids)

  // B's and C's daemons stopped, A gone for good: promote on B, with C listed and not running
  for (const m of [b, c]) assert.equal((await m.d.stop('SIGTERM')).code, 0)
  a.d.child.kill('SIGKILL')
  await a.d.exited
  const promoteEnv = { STORAGE_DIR: b.storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', CLUSTER_PEERS: [a.key, c.key].join(',') }
  const refused = await runBin(['promote', '--from', a.key], promoteEnv)
  assert.equal(refused.code, 1, refused.stderr)
  assert.match(refused.stderr, /promote refused: could not fetch this room's blocks from every other member within 15 s \(0 of 1 answered\)/)
  assert.equal(refused.stdout, '')

  // C answers again: the same command takes the room over, with every message (nothing was taken the first time)
  const c2 = startMember(t, net, c.storage, members.map(m => m.key), c.key, { MIN_MIRRORS: '1' })
  await c2.d.ready()
  const done = await runBin(['promote', '--from', a.key], promoteEnv)
  assert.equal(done.code, 0, done.stderr)
  const result = JSON.parse(done.stdout.trim().split('\n').pop()!)
  assert.deepEqual(result.rooms.map((r: any) => [r.roomName, r.messages]), [[room, ids.length]])
})
