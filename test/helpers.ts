import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { TestContext } from 'node:test'
import HyperDHT from 'hyperdht'
import createTestnet, { type Testnet } from 'hyperdht/testnet.js'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import { ChatRootPeer, type RootPeerOptions } from '../src/root-peer.js'
import { RootPeerClient, type RootPeerClientOptions } from 'root-peer-client'
import { readPublicKey } from '../src/cluster/cluster.js'
import { rendezvousOwner } from '../src/cluster/rendezvous.js'
import { roomKeyPair, signedRoomName, type KeyPair } from 'root-peer-client/protocol'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const DISCOVERY = crypto.hash(Buffer.from('holepunch-root-peer-discovery'))

type Ctx = Pick<TestContext, 'after'>

const stacks = new WeakMap<Ctx, Array<() => unknown>>()

/** Registers a teardown; they run last-registered first (node's own `after` hooks run in order). */
export function teardown (t: Ctx, fn: () => unknown): void {
  let stack = stacks.get(t)
  if (stack === undefined) {
    const fns: Array<() => unknown> = []
    stacks.set(t, fns)
    stack = fns
    t.after(async () => {
      while (fns.length > 0) await fns.pop()!()
    })
  }
  stack.push(fn)
}

/** A loopback DHT testnet of `size` nodes, destroyed after the test. */
export async function testnet (t: Ctx, size = 5): Promise<Testnet> {
  const net = await createTestnet(size, { host: '127.0.0.1' })
  teardown(t, () => net.destroy())
  return net
}

export function bootstrapEnv (net: Testnet): string {
  return net.bootstrap.map(b => `${b.host}:${b.port}`).join(',')
}

/** A fresh temp dir, removed after the test. */
export async function tmpDir (t: Ctx, prefix = 'root-peer-test-'): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix))
  teardown(t, () => fs.rm(dir, { recursive: true, force: true }))
  return dir
}

/** An in-process root peer on the testnet, announced on the discovery topic, closed after the test. */
export async function rootPeer (t: Ctx, net: Testnet, opts: Partial<RootPeerOptions> = {}): Promise<ChatRootPeer> {
  const storageDir = opts.storageDir ?? await tmpDir(t)
  const rp = new ChatRootPeer({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1', statsInterval: 0, ...opts, storageDir })
  const announced = once(rp, 'discovery-announced')
  await rp.ready()
  await announced
  teardown(t, () => rp.close())
  return rp
}

/** The library client on the testnet, connected, closed after the test. */
export async function client (t: Ctx, net: Testnet, opts: RootPeerClientOptions = {}): Promise<RootPeerClient> {
  const c = new RootPeerClient({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1', requestTimeout: 15_000, ...opts })
  teardown(t, () => c.close())
  await c.ready()
  return c
}

/**
 * A bare connection to the root peer, written only from the frame tables of docs/protocol.md:
 * one JSON object per write, frames read back as parsed objects.
 */
export class RawPeer {
  readonly swarm: Hyperswarm
  conn: NoiseStream | null = null
  readonly frames: any[] = []
  /** the announcement, once a caller has taken it from `frames` and kept it here */
  announcement: any = null
  private waiters: Array<{ match: (f: any) => boolean, resolve: (f: any) => void }> = []
  closed = false
  private requests = 0

  /** `keyPair`: connect as this key (a reconnect of the same peer); a fresh one by default */
  constructor (net: Testnet, keyPair?: { publicKey: Buffer, secretKey: Buffer }) {
    this.swarm = new Hyperswarm({ dht: new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }), ...(keyPair === undefined ? {} : { keyPair }) })
  }

  /**
   * Connects through the topic. A connection without a first frame within 5 s is dropped and dialed again, as
   * RootPeerClient does: a dial was seen (under load) to open on this side and never reach the daemon.
   */
  async connect (topic = DISCOVERY): Promise<void> {
    const discovery = this.swarm.join(topic, { client: true, server: false })
    // look the topic up again until a connection comes: the root peer may still be announcing it
    const retry = setInterval(() => { discovery.refresh().catch(() => {}) }, 1000)
    const deadline = Date.now() + 30_000
    try {
      while (true) {
        const [conn] = await once(this.swarm, 'connection') as [NoiseStream]
        const heard = new Promise<boolean>(resolve => {
          const timer = setTimeout(() => resolve(false), 5000)
          conn.once('data', () => { clearTimeout(timer); resolve(true) })
        })
        this.attach(conn)
        if (await heard || Date.now() > deadline) return
        conn.destroy()
      }
    } finally {
      clearInterval(retry)
    }
  }

  private attach (conn: NoiseStream): void {
    this.conn = conn
    this.closed = false
    conn.on('error', () => {})
    conn.on('close', () => { if (this.conn === conn) this.closed = true })
    conn.on('data', (data: Buffer) => {
      let frame: any
      try {
        frame = JSON.parse(data.toString('utf8'))
      } catch {
        frame = { unparsable: data.toString('utf8') }
      }
      const i = this.waiters.findIndex(w => w.match(frame))
      if (i === -1) this.frames.push(frame)
      else this.waiters.splice(i, 1)[0].resolve(frame)
    })
  }

  /** Dials one root peer directly by its public key (hex), as a client that pins it. */
  async connectTo (key: string): Promise<void> {
    const connected = once(this.swarm, 'connection')
    this.swarm.joinPeer(Buffer.from(key, 'hex'))
    const [conn] = await connected as [NoiseStream]
    this.attach(conn)
  }

  send (frame: object | string | Buffer): void {
    this.conn!.write(typeof frame === 'object' && !Buffer.isBuffer(frame) ? JSON.stringify(frame) : frame)
  }

  /** The next frame (already received or coming) that matches; fails after `timeout` ms. */
  next (match: (f: any) => boolean = () => true, timeout = 10_000): Promise<any> {
    const i = this.frames.findIndex(match)
    if (i !== -1) return Promise.resolve(this.frames.splice(i, 1)[0])
    return new Promise((resolve, reject) => {
      const waiter = {
        match,
        resolve: (f: any) => {
          clearTimeout(timer)
          resolve(f)
        }
      }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter(w => w !== waiter)
        reject(new Error(`no matching frame within ${timeout} ms; received: ${JSON.stringify(this.frames).slice(0, 500)}`))
      }, timeout)
      this.waiters.push(waiter)
    })
  }

  nextOfType (type: string, timeout?: number): Promise<any> {
    return this.next(f => f.type === type, timeout)
  }

  /** Sends a sync-request and collects every page. */
  async syncAll (roomName: string, from = 0, limit?: number): Promise<{ messages: any[], pages: any[] }> {
    const messages: any[] = []
    const pages: any[] = []
    let lastIndex = from
    while (true) {
      const requestId = `sync-${this.requests++}`
      this.send({ type: 'sync-request', roomName, lastIndex, requestId, ...(limit ? { limit } : {}) })
      const page = await this.next(f => f.requestId === requestId)
      assert.equal(page.type, 'sync-response', JSON.stringify(page).slice(0, 300))
      pages.push(page)
      messages.push(...page.messages)
      if (!page.hasMore) return { messages, pages }
      lastIndex = page.nextIndex
    }
  }

  async close (): Promise<void> {
    await this.swarm.destroy()
  }
}

export async function rawPeer (t: Ctx, net: Testnet): Promise<RawPeer> {
  const peer = new RawPeer(net)
  teardown(t, () => peer.close())
  await peer.connect()
  return peer
}

/**
 * How a daemon is run: a command line and its working dir. `launcher`: the command starts the daemon as a child of its
 * own (npx, npm), so a signal goes to the pid the daemon logs, and the launcher's exit is awaited.
 */
export interface Bin { argv: string[], cwd: string, launcher?: boolean }

/** `src/bin.ts` of this checkout, through tsx. */
export const SOURCE_BIN: Bin = { argv: [process.execPath, '--conditions=source', '--import', 'tsx', path.join(ROOT, 'src/bin.ts')], cwd: ROOT }

/** The daemon as users run it: a child process of `src/bin.ts` (or of `bin`), its JSON log lines parsed. */
export class Daemon {
  readonly child: ChildProcess
  readonly lines: any[] = []
  readonly stderr: string[] = []
  private waiters: Array<{ match: (l: any) => boolean, resolve: (l: any) => void }> = []
  readonly exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  private readonly launcher: boolean

  /** `prefix`: a command the daemon runs under (strace ...); `child` is then that command's process */
  constructor (args: string[], env: Record<string, string>, prefix: string[] = [], bin = SOURCE_BIN) {
    this.launcher = bin.launcher === true
    const argv = [...prefix, ...bin.argv, ...args]
    this.child = spawn(argv[0], argv.slice(1), {
      cwd: bin.cwd,
      env: childEnv({ NODE_ENV: 'production', PORT: '0', ...env }),
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let buf = ''
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      buf += chunk
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        const text = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        let line: any
        try {
          line = JSON.parse(text)
        } catch {
          line = { msg: text }
        }
        this.lines.push(line)
        this.waiters = this.waiters.filter(w => {
          if (!w.match(line)) return true
          w.resolve(line)
          return false
        })
      }
    })
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => this.stderr.push(chunk))
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({ code, signal })) as Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  }

  /** The first log line (already printed or coming) that matches. */
  line (match: (l: any) => boolean, timeout = 20_000): Promise<any> {
    const found = this.lines.find(match)
    if (found !== undefined) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching log line within ${timeout} ms; stdout: ${JSON.stringify(this.lines).slice(-1500)} stderr: ${this.stderr.join('').slice(-1500)}`)), timeout)
      this.waiters.push({ match, resolve: l => { clearTimeout(timer); resolve(l) } })
    })
  }

  /** Resolves with the public key once the ready line is printed and the discovery topic is announced. */
  async ready (): Promise<string> {
    const ready = await this.line(l => typeof l.msg === 'string' && l.msg.includes('ready'))
    await this.line(l => l.msg === 'announced on the discovery topic')
    return ready.publicKey
  }

  async stop (signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null, signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const logged = this.launcher ? this.lines.find(l => typeof l.pid === 'number')?.pid : undefined
      if (logged === undefined) this.child.kill(signal)
      else process.kill(logged, signal)
    }
    return this.exited
  }
}

export function daemon (t: Ctx, args: string[], env: Record<string, string>, prefix: string[] = [], bin = SOURCE_BIN): Daemon {
  const d = new Daemon(args, env, prefix, bin)
  teardown(t, () => d.stop('SIGKILL'))
  return d
}

/** Runs `src/bin.ts` (or `bin`) to completion, with `input` on its stdin, and returns its exit code and output. */
export async function runBin (args: string[], env: Record<string, string> = {}, input = '', bin = SOURCE_BIN): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(bin.argv[0], [...bin.argv.slice(1), ...args], {
    cwd: bin.cwd,
    env: childEnv({ NODE_ENV: 'production', PORT: '0', ...env }),
    stdio: ['pipe', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c })
  child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c })
  // a command that exits without reading its input is no error here
  child.stdin.on('error', () => {})
  child.stdin.end(input)
  const [code] = await once(child, 'exit')
  return { code, stdout, stderr }
}

/**
 * The environment of a child process the tests start: PATH, HOME and TMPDIR (what node, tsx and npm need) and `env`,
 * nothing else, so a setting the developer exported (MAX_ROOMS, DHT_BOOTSTRAP, LOG_LEVEL ...) cannot change a result.
 */
export function childEnv (env: Record<string, string> = {}): Record<string, string> {
  const kept: Record<string, string> = {}
  for (const name of ['PATH', 'HOME', 'TMPDIR']) {
    const value = process.env[name]
    if (value !== undefined) kept[name] = value
  }
  return { ...kept, ...env }
}

/** Under CI (`CI` set and not `false`; .ci/run sets it), where every tool the tests need is installed. */
export const UNDER_CI = (process.env.CI ?? '') !== '' && process.env.CI !== 'false'

/** The path of `name` on PATH, or null. */
export function findTool (name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir !== '' && existsSync(path.join(dir, name))) return path.join(dir, name)
  }
  return null
}

/**
 * The `skip` of a test that needs something of the machine (a tool, root): `missing` names what is not there, or is
 * null. Outside CI the test is skipped; under CI it runs, and `assertPresent(missing)` fails it with that name.
 */
export function skipUnlessCI (missing: string | null): string | false {
  return missing === null || UNDER_CI ? false : `${missing} (under CI this fails instead)`
}

export function assertPresent (missing: string | null): void {
  if (missing !== null) assert.fail(`${missing}: .ci/run must provide it`)
}

// ---- a cluster of daemons (test/cluster*.test.ts) ----

export const NO_RATES = { RATE_MESSAGES: '0', RATE_BYTES: '0', RATE_SYNCS: '0', RATE_NEW_ROOMS: '0', RATE_REGISTERS: '0' }

export interface Member { d: Daemon, key: string, storage: string }

/** A member's daemon: a child process of src/bin.ts with the other members' keys in CLUSTER_PEERS. */
export function startMember (t: any, net: Testnet, storage: string, keys: string[], key: string, extra: Record<string, string>): Member {
  const d = daemon(t, [], {
    STORAGE_DIR: storage,
    DHT_BOOTSTRAP: bootstrapEnv(net),
    DHT_HOST: '127.0.0.1',
    STATS_INTERVAL: '0',
    CLUSTER_PEERS: keys.filter(k => k !== key).join(','),
    // the suites written before automatic failover test a cluster without it; test/cluster-failover.test.ts sets it
    FAILOVER_AFTER: '0',
    ...NO_RATES,
    ...extra
  })
  if (process.env.CLUSTER_DEBUG) {
    d.child.stdout!.on('data', (chunk: string) => process.stderr.write(`[${key.slice(0, 4)}] ${chunk}`))
    d.child.stderr!.on('data', (chunk: string) => process.stderr.write(`[${key.slice(0, 4)} ERR] ${chunk}`))
  }
  return { d, key, storage }
}

/** Resolves once `d` logs that `member` connected, counting only lines from `from` on. */
export function memberConnected (d: Daemon, member: string, from = 0): Promise<unknown> {
  return d.line(l => l.msg === 'cluster member connected' && l.member === member && d.lines.indexOf(l) >= from, 30_000)
}

/** Three (or `n`) members on one testnet, each learning the others' keys from their data dirs before they start. */
export async function startCluster (t: any, net: Testnet, extra: Record<string, string> = {}, n = 3): Promise<Member[]> {
  const storages: string[] = []
  for (let i = 0; i < n; i++) storages.push(await tmpDir(t, 'root-peer-cluster-'))
  // the same key `root-peer key` prints: derived from the data dir's store
  const keys: string[] = []
  for (const s of storages) keys.push(await readPublicKey(s))
  // one after the other: each dials the ones already up, and finds them at once
  const members: Member[] = []
  for (let i = 0; i < n; i++) {
    const m = startMember(t, net, storages[i], keys, keys[i], extra)
    assert.equal(await m.d.ready(), m.key)
    members.push(m)
  }
  await Promise.all(members.flatMap(m => members.filter(o => o !== m).map(o => memberConnected(m.d, o.key))))
  return members
}

/** A room name whose rendezvous owner is `owner`. */
export function roomOwnedBy (members: Member[], owner: Member, prefix: string): string {
  const keys = members.map(m => m.key)
  for (let i = 0; ; i++) if (rendezvousOwner(`${prefix}-${i}`, keys) === owner.key) return `${prefix}-${i}`
}

/** A signed room's key pair whose name's rendezvous owner (so its primary) is `owner`. */
export function signedRoomOwnedBy (members: Member[], owner: Member, seed: string): KeyPair {
  const keys = members.map(m => m.key)
  for (let i = 0; ; i++) {
    const kp = roomKeyPair(`${seed} ${i}`)
    if (rendezvousOwner(signedRoomName(kp.publicKey), keys) === owner.key) return kp
  }
}

/**
 * Redials `dial` may make in one test. The silent dial it hides (docs/cluster.md) came about once in a run of
 * test/cluster.test.ts (37 dials, at most 11 in one test): three in one test are far above that rate.
 */
export const MAX_REDIALS = 2
const redials = new WeakMap<object, number>()

/**
 * A client connection pinned to one member. A connection without the member's announcement within 5 s is dropped
 * and dialed again, as RootPeerClient does (connectionTimeout): right after a member restarted, a dial to it was
 * seen (twice in some 20 runs) to open on the client's side and never reach the daemon. Each redial is counted
 * per test, and the test fails at the redial past MAX_REDIALS.
 */
export async function dial (t: any, net: Testnet, member: Member): Promise<RawPeer> {
  const deadline = Date.now() + 30_000
  while (true) {
    const peer = new RawPeer(net)
    teardown(t, () => peer.close())
    await peer.connectTo(member.key)
    try {
      peer.announcement = await peer.nextOfType('root-peer-announcement', 5000)
      return peer
    } catch (err) {
      await peer.close()
      const n = (redials.get(t) ?? 0) + 1
      redials.set(t, n)
      const client = peer.swarm.keyPair.publicKey.toString('hex')
      const logged = member.d.lines.filter(l => l.peerId === client).map(l => l.msg)
      const what = `no announcement from ${member.key.slice(0, 8)} within 5 s (its log of this client: ${JSON.stringify(logged)})`
      assert.ok(n <= MAX_REDIALS, `dial: ${what}; redial ${n} in this test, more than MAX_REDIALS (${MAX_REDIALS})`)
      if (Date.now() > deadline) throw err
      console.log(`dial: ${what}; redial ${n} of at most ${MAX_REDIALS} in this test`)
    }
  }
}

/** Reads the room at `member` until it serves `length` messages (it follows the primary, or the other mirrors, live). */
export async function readUntil (t: any, net: Testnet, member: Member, room: string, length: number): Promise<any[]> {
  const peer = await dial(t, net, member)
  const deadline = Date.now() + 20_000
  let messages: any[] = []
  while (Date.now() < deadline) {
    messages = (await peer.syncAll(room)).messages
    if (messages.length >= length) break
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  await peer.close()
  return messages
}

/** Sends messages with ids and resolves with their acks (or error frames), by id. */
export async function sendAll (peer: RawPeer, room: string, ids: string[]): Promise<Map<string, any>> {
  for (const id of ids) peer.send({ type: 'message', roomName: room, message: `payload of ${id}`, id })
  const answers = new Map<string, any>()
  for (const id of ids) answers.set(id, await peer.next(f => f.id === id, 30_000))
  return answers
}

/** A member's metric `name` (a series without labels), read from its /metrics. */
export async function metricAt (m: Member, name: string): Promise<number> {
  const url = (await m.d.line(l => l.url !== undefined)).url as string
  const text = await (await fetch(new URL('/metrics', url))).text()
  const found = new RegExp(`^${name} (\\S+)$`, 'm').exec(text)
  assert.ok(found !== null, `${name} in /metrics`)
  return Number(found[1])
}

/** The messages `m` holds of `room` (a room it owns, or mirrors: blocks stored without a gap), from /stats; no read. */
export async function heldAt (m: Member, room: string): Promise<number | null> {
  const url = (await m.d.line(l => l.url !== undefined)).url as string
  const stats = await (await fetch(new URL('/stats', url))).json() as { busiestRooms: Array<{ name: string, messageCount: number }> }
  return stats.busiestRooms.find(r => r.name === room)?.messageCount ?? null
}
