import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import readline from 'node:readline'
import test from 'node:test'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import { RootPeerClient, type FrameRejected, type RecordRejected } from 'root-peer-client'
import { DEFAULT_LIMITS } from '../src/protocol/protocol.js'
import { roomKeyPair, signedRoomName, signMessage } from 'root-peer-client/protocol'
import { DISCOVERY, ROOT, bootstrapEnv, childEnv, client, rawPeer, rootPeer, teardown, testnet } from './helpers.js'

type Ctx = Parameters<typeof teardown>[0]
type Behaviour = (fake: FakeRootPeer, conn: NoiseStream, frame: any) => void

const UNLIMITED = { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, registersPerMinute: 0, newRoomsPerMinute: 0 }

/** A root peer of one's own on the discovery topic: it announces itself and then speaks the protocol badly. */
class FakeRootPeer {
  readonly swarm: Hyperswarm
  connects = 0
  readonly received: any[] = []

  constructor (net: Testnet, private readonly behave: Behaviour, private readonly onConnect: (fake: FakeRootPeer, conn: NoiseStream) => void = (fake, conn) => fake.announce(conn)) {
    this.swarm = new Hyperswarm({ dht: new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }) })
    this.swarm.on('connection', (conn: NoiseStream) => {
      this.connects++
      conn.on('error', () => {})
      conn.on('data', (data: Buffer) => {
        const frame = JSON.parse(data.toString())
        this.received.push(frame)
        this.behave(this, conn, frame)
      })
      this.onConnect(this, conn)
    })
  }

  get publicKey (): string {
    return this.swarm.keyPair.publicKey.toString('hex')
  }

  announce (conn: NoiseStream): void {
    conn.write(JSON.stringify(this.announcement()))
  }

  announcement (): object {
    return { type: 'root-peer-announcement', version: 2, publicKey: this.publicKey, limits: DEFAULT_LIMITS, challenge: crypto.randomBytes(32).toString('hex'), access: 2 }
  }
}

async function fakeRootPeer (t: Ctx, net: Testnet, behave: Behaviour, onConnect?: (fake: FakeRootPeer, conn: NoiseStream) => void): Promise<FakeRootPeer> {
  const fake = new FakeRootPeer(net, behave, onConnect)
  teardown(t, () => fake.swarm.destroy())
  await fake.swarm.join(DISCOVERY, { server: true, client: false }).flushed()
  return fake
}

/** test/fixtures/hostile-client.ts in a child process: its JSON lines, stderr and exit code. */
async function hostileClient (t: Ctx, net: Testnet, args: string[]): Promise<{ code: number | null, lines: any[], stderr: string }> {
  const child = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', path.join(ROOT, 'test/fixtures/hostile-client.ts'), bootstrapEnv(net), ...args], { cwd: ROOT, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  teardown(t, () => { child.kill('SIGKILL') })
  const lines: any[] = []
  let stderr = ''
  readline.createInterface({ input: child.stdout! }).on('line', line => lines.push(JSON.parse(line)))
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  const [code] = await once(child, 'close')
  clearTimeout(timer)
  return { code, lines, stderr }
}

const record = (messageIndex: number, message: unknown, extra: object = {}): object => ({ message, storedAt: Date.now(), fromPeer: 'ab'.repeat(32), senderPublicKey: 'ab'.repeat(32), messageIndex, ...extra })

test('a fake root peer\'s malformed frames and records are dropped and reported, never thrown into the app', async t => {
  const net = await testnet(t)
  const bad: Array<object | string> = [
    { type: 'follow-messages', roomName: 'plain', messages: 5, nextIndex: 5 },
    { type: 'follow-messages', roomName: 'plain', messages: [], nextIndex: 'x' },
    { type: 'follow-messages', roomName: 'plain', messages: null, nextIndex: 1 },
    { type: 'follow-messages', messages: [], nextIndex: 1 },
    { type: 'follow-live', roomName: 'plain', nextIndex: -1 },
    { type: 'follow-ended', roomName: 'plain', reason: 7 },
    { type: 'message-ack', roomName: 'plain', id: 'x', messageIndex: {} },
    { type: 'error', code: 5, message: 'x' },
    { type: 'error', code: 'RATE_LIMITED', requestType: 'follow', roomName: 'plain', retryAfterMs: -1, message: '' },
    { type: 'sync-response', roomName: 'plain', messages: 'nope', totalMessages: 0, nextIndex: 0, hasMore: false },
    'not json {',
    '[1,2,3]',
    'null',
    '42',
    { type: 42 },
    { type: '__proto__' },
    { type: 'constructor' },
    { type: 'toString' },
    { type: 'room-registered', roomName: 'plain', messageCount: 0 }
  ]
  // records the app must not get, then a page's nextIndex that lies about how far it reached
  const badRecords = [5, null, 'x', [], record(-1, 'a'), record(1.5, 'a'), { message: 'no index' }, { messageIndex: 3 }, record(4, 'a', { storedAt: 'yesterday' }), record(5, 'b', { fromPeer: 7 })]
  await fakeRootPeer(t, net, (fake, conn, frame) => {
    if (frame.type === 'register-room') {
      // first an answer of the wrong type to the request, then the right one
      conn.write(JSON.stringify({ type: 'sync-response', roomName: 'plain', messages: [], totalMessages: 0, nextIndex: 0, hasMore: false, requestId: frame.requestId }))
      conn.write(JSON.stringify({ type: 'room-registered', roomName: 'plain', messageCount: 1, requestId: frame.requestId }))
    }
    if (frame.type === 'follow') {
      for (const f of bad) conn.write(typeof f === 'string' ? f : JSON.stringify(f))
      conn.write(JSON.stringify(fake.announcement()))
      conn.write(JSON.stringify({ type: 'follow-messages', roomName: 'plain', messages: badRecords, nextIndex: Number.MAX_SAFE_INTEGER }))
      conn.write(JSON.stringify({ type: 'follow-messages', roomName: 'plain', messages: [record(6, 'ok')], nextIndex: 7 }))
    }
  })
  const { code, lines, stderr } = await hostileClient(t, net, ['survive'])
  const frames = lines.filter(l => l.event === 'frame-rejected')
  const records = lines.filter(l => l.event === 'record-rejected')
  console.log(`client exit code ${String(code)}; ${frames.length} frames and ${records.length} records rejected; stderr ${JSON.stringify(stderr.slice(0, 200))}`)
  assert.equal(code, 0, stderr)
  assert.equal(stderr, '')
  assert.deepEqual(lines.find(l => l.step === 'registered'), { step: 'registered', roomName: 'plain', messageCount: 1 })
  assert.deepEqual(lines.find(l => l.step === 'followed'), { step: 'followed', messageIndex: 6, message: 'ok' })
  // each bad frame, the second announcement and the wrong answer to register-room
  assert.equal(frames.length, bad.length + 2, JSON.stringify(frames))
  assert.ok(frames.every(f => typeof f.reason === 'string'))
  assert.deepEqual(records.map(r => r.reason), ['not-a-record', 'not-a-record', 'not-a-record', 'not-a-record', 'bad-index', 'bad-index', 'bad-index', 'not-a-record', 'not-a-record', 'not-a-record'])
})

test('a root peer that floods a follow while the app is busy: the client holds a bounded backlog', async t => {
  const net = await testnet(t)
  const PAGE = Array.from({ length: 500 }, () => 'x'.repeat(1000))
  let sent = 0
  await fakeRootPeer(t, net, (fake, conn, frame) => {
    if (frame.type !== 'follow' || sent > 0) return
    // it ignores unfollow and never stops: pages as fast as the connection takes them
    let next = frame.fromIndex as number
    const flood = (): void => {
      while (!conn.destroyed) {
        const messages = PAGE.map((m, i) => record(next + i, m))
        next += messages.length
        sent += messages.length
        if (!conn.write(JSON.stringify({ type: 'follow-messages', roomName: 'flood', messages, nextIndex: next }))) {
          conn.once('drain', flood)
          return
        }
      }
    }
    flood()
  })
  const { code, lines, stderr } = await hostileClient(t, net, ['slow', '8000'])
  assert.equal(code, 0, `${stderr} ${JSON.stringify(lines)}`)
  const slow = lines.find(l => l.step === 'slow')
  const paused = lines.filter(l => l.event === 'follow-paused')
  console.log(`flood: ${sent} records sent in ~9 s; client RSS ${slow.baseMb} MB at its first message, +${slow.busyGrowthMb} MB after 8 s busy, peak +${slow.peakGrowthMb} MB; ${slow.pagesDropped} pages dropped; the app then took ${slow.taken}`)
  assert.equal(paused.length, 1)
  assert.ok(paused[0].queued <= 4096 + PAGE.length, `queued ${paused[0].queued}`)
  assert.ok(slow.pagesDropped > 0)
  assert.ok(slow.taken > 0)
  assert.ok(slow.peakGrowthMb < 100, `peak growth ${slow.peakGrowthMb} MB`)
})

test('a slow app following a long history on a real root peer: the follow stops and resumes, every message once, in order', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, UNLIMITED)
  const writer = await rawPeer(t, net)
  const N = 6000
  const payload = 'y'.repeat(1500)
  for (let i = 0; i < N; i++) writer.send({ type: 'message', roomName: 'long', message: `${i} ${payload}`, id: `m${i}` })
  await writer.next(f => f.type === 'message-ack' && f.id === `m${N - 1}`, 60_000)
  const reader = await client(t, net, { rootPublicKey: rp.publicKey! })
  let pauses = 0
  let resumes = 0
  reader.on('follow-paused', () => pauses++)
  reader.on('follow-resumed', () => resumes++)
  const indices: number[] = []
  for await (const m of reader.follow('long')) {
    assert.equal(m.message, `${indices.length} ${payload}`)
    indices.push(m.messageIndex)
    if (indices.length === 1) await once(reader, 'follow-paused')
    if (indices.length === N) break
  }
  console.log(`slow app: ${indices.length} of ${N} messages, ${pauses} pauses, ${resumes} resumes, ${reader.counters.pagesDropped} pages dropped in flight`)
  assert.deepEqual(indices, Array.from({ length: N }, (_, i) => i))
  assert.ok(pauses >= 1 && resumes >= 1)
})

test('an empty page with nextIndex 2^53-1 from a fake, then failover to the real root peer: the follow yields all 5 messages', async t => {
  const net = await testnet(t)
  // the real root peer on a topic of its own: the member reaches it only by failing over to its key
  const rp = await rootPeer(t, net, { discoveryTopic: 'the-real-root-peer' })
  const realKey = rp.publicKey!.toString('hex')
  const roomKey = crypto.randomBytes(32)
  const owner = await client(t, net, { discoveryTopic: 'the-real-root-peer', rootPublicKey: realKey })
  const { roomName } = await owner.registerRoom(roomKey)
  for (let i = 0; i < 5; i++) await owner.sendMessage(roomName, `secret ${i}`)

  const fake = await fakeRootPeer(t, net, (fake, conn, frame) => {
    if (frame.type === 'register-room') conn.write(JSON.stringify({ type: 'room-registered', roomName: frame.roomName, messageCount: 0, requestId: frame.requestId }))
    if (frame.type === 'follow') {
      conn.write(JSON.stringify({ type: 'follow-messages', roomName: frame.roomName, messages: [], nextIndex: Number.MAX_SAFE_INTEGER }))
      conn.write(JSON.stringify({ type: 'follow-live', roomName: frame.roomName, nextIndex: Number.MAX_SAFE_INTEGER, firstIndex: Number.MAX_SAFE_INTEGER }))
      // then it goes away for good
      setTimeout(() => { fake.swarm.destroy().catch(() => {}) }, 200)
    }
  })
  const member = new RootPeerClient({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1', rootPublicKeys: [fake.publicKey, realKey], requestTimeout: 15_000 })
  teardown(t, () => member.close())
  await member.ready()
  assert.equal(member.rootPublicKey, fake.publicKey)
  await member.registerRoom(roomKey)
  const lives: number[] = []
  member.on('follow-live', (_room, nextIndex) => lives.push(nextIndex))
  const got: string[] = []
  for await (const m of member.follow(roomName)) {
    got.push(m.message as string)
    if (got.length === 5) break
  }
  console.log(`member: ${got.length} of 5 messages after the fake's nextIndex ${Number.MAX_SAFE_INTEGER} and the failover to ${member.rootPublicKey === realKey ? 'the real root peer' : 'another'}; follow-live said ${JSON.stringify(lives)}`)
  assert.equal(member.rootPublicKey, realKey)
  assert.deepEqual(got, ['secret 0', 'secret 1', 'secret 2', 'secret 3', 'secret 4'])
})

test('a genuine signed record replayed 1,000 times with forged storedAt and senderPublicKey is delivered once', async t => {
  const net = await testnet(t)
  const roomKey = crypto.randomBytes(32)
  const kp = roomKeyPair(roomKey)
  const roomName = signedRoomName(kp.publicKey)
  const genuine = (id: string, message: string): object => ({ id, message, signature: signMessage(kp.secretKey, roomName, id, message) })
  const REPLAYS = 1000
  await fakeRootPeer(t, net, (fake, conn, frame) => {
    if (frame.type === 'register-room') conn.write(JSON.stringify({ type: 'room-registered', roomName, messageCount: REPLAYS, requestId: frame.requestId }))
    if (frame.type !== 'follow') return
    const replays = Array.from({ length: REPLAYS }, (_, i) => ({
      ...genuine('m0', 'hello'),
      storedAt: Math.floor(Math.random() * 2 ** 40),
      fromPeer: crypto.randomBytes(32).toString('hex'),
      senderPublicKey: crypto.randomBytes(32).toString('hex'),
      // half at new indices, half at the index it was first given
      messageIndex: i % 2 === 0 ? i : 0
    }))
    for (let i = 0; i < REPLAYS; i += 100) {
      conn.write(JSON.stringify({ type: 'follow-messages', roomName, messages: replays.slice(i, i + 100), nextIndex: i + 100 }))
    }
    conn.write(JSON.stringify({ type: 'follow-messages', roomName, messages: [{ ...genuine('m1', 'bye'), storedAt: 1, fromPeer: 'x', senderPublicKey: 'x', messageIndex: REPLAYS }], nextIndex: REPLAYS + 1 }))
  })
  const member = await client(t, net)
  const rejected: RecordRejected[] = []
  member.on('record-rejected', (r: RecordRejected) => rejected.push(r))
  await member.registerRoom(roomKey)
  const got: string[] = []
  for await (const m of member.follow(roomName)) {
    got.push(m.message as string)
    if (m.message === 'bye') break
  }
  const reasons = new Set(rejected.map(r => r.reason))
  console.log(`one signed record replayed ${REPLAYS} times: delivered ${got.filter(m => m === 'hello').length} time(s); ${rejected.length} rejected as ${[...reasons].join(', ')}`)
  assert.deepEqual(got, ['hello', 'bye'])
  assert.equal(rejected.length, REPLAYS - 1)
  assert.deepEqual([...reasons], ['duplicate'])
})

test('a fake that announces and hangs up: the reconnect backoff grows, so it gets a handful of connects', async t => {
  const net = await testnet(t)
  let resent = 0
  const fake = await fakeRootPeer(t, net, (fake, conn, frame) => { if (frame.type === 'message') resent++ }, (fake, conn) => {
    fake.announce(conn)
    setTimeout(() => conn.destroy(), 50)
  })
  const app = new RootPeerClient({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1' })
  teardown(t, () => app.close())
  app.sendMessage('plain', 'ciphertext').catch(() => {})
  const rejected: FrameRejected[] = []
  app.on('frame-rejected', (r: FrameRejected) => rejected.push(r))
  await once(app, 'connect')
  const from = fake.connects
  const WINDOW = 20_000
  await new Promise(resolve => setTimeout(resolve, WINDOW))
  const connects = fake.connects - from + 1
  console.log(`announce-and-hang-up fake: ${connects} connects in ${WINDOW / 1000} s, the message resent ${resent} times`)
  assert.ok(connects >= 2, 'the client does reconnect')
  assert.ok(connects <= 8, `${connects} connects`)
  assert.ok(resent <= connects)
})
