// The bench's plumbing: temp dirs and cleanup, the daemon as a child process, a client connection.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import crypto from 'hypercore-crypto'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
/** USER_HZ of /proc/<pid>/stat, 100 on Linux */
const CLOCK_TICKS = 100
const DISCOVERY = crypto.hash(Buffer.from('holepunch-root-peer-discovery'))

export const cleanups: Array<() => Promise<unknown> | unknown> = []
export async function cleanup (): Promise<void> {
  while (cleanups.length > 0) {
    try { await cleanups.pop()!() } catch {}
  }
}

export async function tempDir (prefix: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix))
  cleanups.push(() => fs.rm(dir, { recursive: true, force: true }))
  return dir
}

export function rate (count: number, ms: number): number {
  return Math.round(count / (ms / 1000))
}

export function percentile (sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
}

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** The settings every bench daemon runs with: the loopback testnet, the monitor on a free port, rate limits and bans off. */
export function benchEnv (net: { bootstrap: Array<{ host: string, port: number }> }): Record<string, string> {
  return {
    DHT_BOOTSTRAP: net.bootstrap.map(b => `${b.host}:${b.port}`).join(','),
    DHT_HOST: '127.0.0.1',
    HOST: '127.0.0.1',
    PORT: '0',
    STATS_INTERVAL: '0',
    RATE_MESSAGES: '0',
    RATE_BYTES: '0',
    RATE_SYNCS: '0',
    RATE_REGISTERS: '0',
    RATE_NEW_ROOMS: '0',
    BAN_THRESHOLD: '0',
    // every bench peer connects from 127.0.0.1
    MAX_PEERS_PER_HOST: '0'
  }
}

/** The daemon as a child process, its JSON log lines read for the ready and monitor lines. */
export class Daemon {
  readonly child: ChildProcess
  /** when it was spawned (performance.now()): a --cpu-prof profile's samples are timed from about then */
  readonly spawnedAt = performance.now()
  private readonly lines: any[] = []
  private waiters: Array<{ match: (l: any) => boolean, resolve: (l: any) => void }> = []
  readonly exited: Promise<unknown>

  /** `execArgv`: node's own flags before `bin` (the reference server runs through tsx) */
  constructor (env: Record<string, string>, profileDir: string | null, bin = path.join(ROOT, 'dist/bin.js'), execArgv: string[] = []) {
    // the built daemon, as deployed: tsx's loader would add its own memory and startup work
    const args = [...execArgv, ...(profileDir !== null ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []), bin]
    this.child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, NODE_ENV: 'production', ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
    this.exited = once(this.child, 'exit')
    let buf = ''
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      buf += chunk
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        let line: any
        try { line = JSON.parse(buf.slice(0, nl)) } catch { line = {} }
        buf = buf.slice(nl + 1)
        this.lines.push(line)
        this.waiters = this.waiters.filter(w => !w.match(line) || (w.resolve(line), false))
      }
    })
  }

  line (match: (l: any) => boolean, timeout = 60_000): Promise<any> {
    const found = this.lines.find(match)
    if (found !== undefined) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('daemon: no matching log line')), timeout)
      this.waiters.push({ match, resolve: l => { clearTimeout(timer); resolve(l) } })
    })
  }

  async rssMB (): Promise<number> {
    const status = await fs.readFile(`/proc/${this.child.pid}/status`, 'utf8')
    return Math.round(Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024 * 10) / 10
  }

  /** CPU seconds (user + system) the daemon has used so far. */
  async cpuSeconds (): Promise<number> {
    const stat = await fs.readFile(`/proc/${this.child.pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
  }

  /** SIGTERM, and resolves with the ms it took to exit (SIGKILL past 15 s). */
  async stop (): Promise<number> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return 0
    const t0 = performance.now()
    this.child.kill('SIGTERM')
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000)
    await this.exited
    clearTimeout(timer)
    return Math.round(performance.now() - t0)
  }
}

/** One client connection on the testnet: frames out as one JSON object per write, frames in parsed. */
export class Client {
  readonly swarm: Hyperswarm
  conn!: NoiseStream
  announcement: any = null
  onFrame: (frame: any) => void = () => {}
  private closing = false

  constructor (net: Testnet) {
    this.swarm = new Hyperswarm({ dht: new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }) })
    cleanups.push(() => this.destroy())
    // every connection, not only the first: an unhandled stream error would end the bench
    this.swarm.on('connection', (conn: NoiseStream) => conn.on('error', () => {}))
  }

  async connect (): Promise<void> {
    const connected = once(this.swarm, 'connection')
    const discovery = this.swarm.join(DISCOVERY, { client: true, server: false })
    const retry = setInterval(() => { discovery.refresh().catch(() => {}) }, 1000)
    const [conn] = await connected.finally(() => clearInterval(retry)) as [NoiseStream]
    // one connection: further ones (a refresh finding the server again) could replace this one, and the
    // frames written to it would be lost without a word; a step waits on its answers
    await this.swarm.leave(DISCOVERY)
    this.conn = conn
    conn.on('error', () => {})
    conn.once('close', () => {
      if (!this.closing) this.onFrame({ type: 'error', code: 'CONNECTION_CLOSED', message: 'the bench client\'s connection closed' })
    })
    const announced = new Promise<void>(resolve => {
      this.onFrame = f => {
        if (f.type !== 'root-peer-announcement') return
        this.announcement = f
        resolve()
      }
    })
    conn.on('data', (data: Buffer) => this.onFrame(JSON.parse(data.toString('utf8'))))
    await announced
  }

  send (frame: object): void {
    this.conn.write(JSON.stringify(frame))
  }

  async destroy (): Promise<void> {
    this.closing = true
    await this.swarm.destroy()
  }

  /** Sends a sync-request and resolves with its answer. */
  request (frame: object): Promise<any> {
    return new Promise(resolve => {
      this.onFrame = f => { if (f.type === 'sync-response' || f.type === 'room-registered' || f.type === 'error') resolve(f) }
      this.send(frame)
    })
  }
}

/** Compiles the client package and src/ to their dist/ (npm run build), so the daemon measured is the current code. */
export async function build (): Promise<void> {
  for (const config of ['packages/client/tsconfig.build.json', 'tsconfig.build.json']) {
    const tsc = spawn(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', path.join(ROOT, config)], { cwd: ROOT, stdio: 'inherit' })
    const [code] = await once(tsc, 'exit')
    if (code !== 0) throw new Error(`build of ${config} failed`)
  }
}

/** The daemon's V8 heap and external memory (MB), from prom-client's default metrics on /metrics. */
export async function heapMB (url: string): Promise<{ heapUsed: number, heapTotal: number, external: number }> {
  const text = await (await fetch(`${url}/metrics`)).text()
  const read = (name: string): number => {
    const m = new RegExp(`^${name} ([0-9.e+]+)`, 'm').exec(text)
    return m === null ? NaN : Math.round(Number(m[1]) / 1024 / 1024 * 10) / 10
  }
  return { heapUsed: read('nodejs_heap_size_used_bytes'), heapTotal: read('nodejs_heap_size_total_bytes'), external: read('nodejs_external_memory_bytes') }
}

export async function stats (url: string): Promise<any> {
  const res = await fetch(`${url}/stats`)
  return res.json()
}

export function round2 (x: number): number {
  return Math.round(x * 100) / 100
}

/**
 * Runs a bench's `main`: on an error, Ctrl-C or an error from a stream the bench did not expect, the daemons
 * are stopped and the temp dirs removed before the process exits.
 */
export function runBench (main: () => Promise<void>): void {
  process.on('SIGINT', () => { cleanup().finally(() => process.exit(130)) })
  process.on('uncaughtException', err => {
    console.error(err)
    cleanup().finally(() => process.exit(1))
  })
  main().then(cleanup, async err => {
    console.error(err)
    await cleanup()
    process.exitCode = 1
  }).finally(() => setTimeout(() => process.exit(), 1000).unref())
}
