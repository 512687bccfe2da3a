import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs/promises'
import path from 'node:path'
import test from 'node:test'
import { ROOT, bootstrapEnv, client, daemon, rawPeer, rootPeer, teardown, testnet, tmpDir, type RawPeer } from './helpers.js'

const UNLIMITED = { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, registersPerMinute: 0, newRoomsPerMinute: 0 }

async function write (peer: RawPeer, roomName: string, from: number, to: number, payload = 'x'): Promise<void> {
  for (let i = from; i < to; i++) peer.send({ type: 'message', roomName, message: `${payload}${i}`, id: `m${i}` })
  for (let i = from; i < to; i++) {
    const ack = await peer.next(f => f.type === 'message-ack' && f.id === `m${i}`, 30_000)
    assert.equal(ack.messageIndex, i)
  }
}

/** Follow frames until `count` messages have come after `follow-live`; checks the order as they come. */
async function collect (peer: RawPeer, roomName: string, from: number, count: number): Promise<{ history: number, live: any }> {
  let next = from
  let history = 0
  let live: any = null
  while (next < from + count || live === null) {
    const f = await peer.next(f => f.roomName === roomName && (f.type === 'follow-messages' || f.type === 'follow-live'), 30_000)
    if (f.type === 'follow-live') {
      assert.equal(live, null, 'one follow-live')
      assert.equal(f.nextIndex, next)
      live = f
      continue
    }
    for (const m of f.messages) {
      assert.equal(m.messageIndex, next, 'in index order, no gap, no repeat')
      assert.equal(m.message, `x${next}`)
      next++
      if (live === null) history++
    }
    assert.equal(f.nextIndex, next)
  }
  return { history, live }
}

async function stopped (pid: number): Promise<boolean> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')
}

/** The indices of the next `count` messages a follow sends for the room. */
async function liveIndices (peer: RawPeer, roomName: string, count: number): Promise<number[]> {
  const indices: number[] = []
  while (indices.length < count) {
    const f = await peer.next(f => f.type === 'follow-messages' && f.roomName === roomName, 30_000)
    indices.push(...f.messages.map((m: any) => m.messageIndex))
  }
  return indices
}

test('follow: the stored messages from fromIndex, follow-live, then each new message from other peers in order', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, UNLIMITED)
  const writer = await rawPeer(t, net)
  await write(writer, 'live', 0, 30)
  const follower = await rawPeer(t, net)
  follower.send({ type: 'follow', roomName: 'live', fromIndex: 10, requestId: 'f1' })
  const other = await rawPeer(t, net)
  const collected = collect(follower, 'live', 10, 120)
  // two writers at once, taking turns by room index through their acks
  await write(writer, 'live', 30, 80)
  await write(other, 'live', 80, 130)
  const { history, live } = await collected
  assert.ok(history >= 20, `history ${history}`)
  assert.equal(live.requestId, 'f1')
  assert.equal(rp.follows.open, 1)

  follower.send({ type: 'unfollow', roomName: 'live', requestId: 'u1' })
  const ended = await follower.nextOfType('follow-ended')
  assert.deepEqual(ended, { type: 'follow-ended', roomName: 'live', reason: 'unfollowed', requestId: 'u1' })
  assert.equal(rp.follows.open, 0)
  await write(writer, 'live', 130, 131)
  const sent = rp.counters.framesSent['follow-messages']
  await writer.syncAll('live')
  assert.equal(rp.counters.framesSent['follow-messages'], sent, 'nothing sent after unfollow')
})

test('follow: a room not yet created starts with its first message; MAX_FOLLOWS bounds a connection; a new follow replaces', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { ...UNLIMITED, maxFollows: 2 })
  const follower = await rawPeer(t, net)
  const announcement = follower.frames.find(f => f.type === 'root-peer-announcement')
  assert.equal(announcement.limits.maxFollows, 2)
  follower.send({ type: 'follow', roomName: 'later' })
  assert.equal((await follower.nextOfType('follow-live')).nextIndex, 0)
  follower.send({ type: 'follow', roomName: 'b' })
  await follower.nextOfType('follow-live')
  follower.send({ type: 'follow', roomName: 'c', requestId: 'third' })
  const refused = await follower.nextOfType('error')
  assert.equal(refused.code, 'TOO_MANY_FOLLOWS')
  assert.equal(refused.requestId, 'third')
  assert.equal(rp.follows.open, 2)

  const writer = await rawPeer(t, net)
  await write(writer, 'later', 0, 3)
  assert.deepEqual(await liveIndices(follower, 'later', 3), [0, 1, 2])
  follower.send({ type: 'follow', roomName: 'later', fromIndex: 1 })
  assert.equal((await follower.nextOfType('follow-ended')).reason, 'replaced')
  const again = await follower.next(f => f.type === 'follow-messages' && f.roomName === 'later')
  assert.deepEqual(again.messages.map((m: any) => m.messageIndex), [1, 2])
  assert.equal(rp.follows.open, 2)
  await follower.close()
  while (rp.follows.open > 0) await once(rp, 'peer-disconnected')
})

test('follow: a follower that stops reading is paused, not buffered for, and catches up in order when it reads again', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { ...UNLIMITED, stallTimeout: 120_000 })
  const key = rp.publicKey!.toString('hex')
  const writer = await rawPeer(t, net)
  const payload = 'x'.repeat(2000)
  // 3 MB of history: far more than the connection's buffers
  await write(writer, 'big', 0, 1500, payload)

  const child = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', path.join(ROOT, 'test/fixtures/stopping-follower.ts'), bootstrapEnv(net), key, 'big', '2500'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
  teardown(t, () => { child.kill('SIGKILL') })
  let out = ''
  child.stdout.on('data', d => { out += String(d) })
  // the child has stopped itself (and so acknowledges nothing more), and the follow has paused for it
  while (!out.includes('stopping') || !(await stopped(child.pid!)) || rp.follows.waiting === 0) await new Promise(resolve => setTimeout(resolve, 100))
  const pagesWhilePaused = rp.counters.framesSent['follow-messages']
  // 1,000 more messages while the follower is stopped: none of them is sent to it
  await write(writer, 'big', 1500, 2500, payload)
  assert.equal(rp.follows.waiting, 1)
  assert.equal(rp.counters.framesSent['follow-messages'], pagesWhilePaused)
  console.log(`stopped follower: ${pagesWhilePaused} pages sent before it was paused, none while 1,000 messages came`)

  child.kill('SIGCONT')
  const [code] = await once(child, 'exit')
  assert.equal(code, 0, out)
  assert.match(out, /received 2500/)
  assert.equal(rp.counters.stalledPeers, 0)
})

test('client.follow: 1,000 messages from two other clients, in order and none missing, across a daemon restart in the middle', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', RATE_MESSAGES: '0', RATE_BYTES: '0' }
  const first = daemon(t, [], env)
  const key = await first.ready()
  const follower = await client(t, net, { rootPublicKey: key })
  const writers = [await client(t, net, { rootPublicKey: key }), await client(t, net, { rootPublicKey: key })]
  await writers[0].registerRoom('chat')

  const seen: any[] = []
  let seenAtRestart = -1
  follower.on('disconnect', () => { if (seenAtRestart === -1) seenAtRestart = seen.length })
  const followed = (async () => {
    for await (const m of follower.follow('chat')) {
      seen.push(m)
      if (seen.length === 1000) return
    }
  })()
  const send = (from: number, to: number): Array<Promise<unknown>> => {
    const acks: Array<Promise<unknown>> = []
    for (let i = from; i < to; i++) acks.push(writers[i % 2].sendMessage('chat', `w${i % 2}-${i}`, { id: `id-${i}` }))
    return acks
  }
  await Promise.all(send(0, 500))
  // the second half is sent while the daemon restarts: the writers resend what was not acked, the follower resumes
  const restarted = first.stop('SIGTERM').then(async () => await daemon(t, [], env).ready())
  const acks = send(500, 1000)
  assert.equal(await restarted, key)
  await Promise.all(acks)
  await followed

  console.log(`follower: ${seenAtRestart} messages before the restart, ${1000 - seenAtRestart} after`)
  assert.ok(seenAtRestart > 0 && seenAtRestart < 1000, 'the follower was disconnected mid-stream')
  assert.deepEqual(seen.map(m => m.messageIndex), Array.from({ length: 1000 }, (_, i) => i), 'every index once, in order')
  assert.deepEqual(seen.map(m => m.message).sort(), Array.from({ length: 1000 }, (_, i) => `w${i % 2}-${i}`).sort(), 'every message once')
})
