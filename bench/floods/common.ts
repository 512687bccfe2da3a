// What every flood of bench/hostile.ts shares: the shape of a scenario, strangers' raw connections, filling rooms.
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import { Client, type Daemon } from '../harness.js'

export type Bootstrap = Array<{ host: string, port: number }>

/** What the strangers' process is told: the root peer's key, the testnet, the relay's key from the announcement. */
export interface AttackContext {
  publicKey: Buffer
  bootstrap: Bootstrap
  relay: Buffer | null
}

/** The measured daemon, for the figures a scenario reads before and after its flood. */
export interface Stage {
  net: Testnet
  daemon: Daemon
  monitorUrl: string
  publicKey: Buffer
}

export interface Attack {
  /** what the strangers did and got, as one JSON-able object */
  tallies: () => unknown
  stop: () => Promise<void>
}

export interface Scenario {
  /** one line on what the strangers do, for the printed table */
  title: string
  /** settings of the measured daemon beside its defaults */
  env?: Record<string, string>
  /** fills the store first, through a daemon with rate limits off that is stopped before the measured one starts */
  prefill?: (net: Testnet) => Promise<void>
  /** after the quiet phase, before the flood: figures measured one at a time */
  before?: (stage: Stage) => Promise<Record<string, unknown>>
  /** in the strangers' process: resolves once the flood is under way */
  attack: (ctx: AttackContext) => Promise<Attack>
  /** at the end of the flood, while the strangers still run */
  during?: (stage: Stage) => Promise<Record<string, unknown>>
  /** the scenario's own figures, from the strangers' tallies and the daemon after the flood */
  after?: (stage: Stage, tallies: any, measured: Measured) => Promise<Record<string, unknown>>
  /** one line of those figures */
  describe: (figures: Record<string, unknown>, tallies: any) => string
}

/** What hostile.ts measured of the daemon during a phase. */
export interface Measured {
  seconds: number
  cpuSeconds: number
  quietCpuSeconds: number
  quietPeakMB: number
  peakMB: number
  before: Record<string, unknown>
}

export interface Tally { connections: number, opened: number, errors: Record<string, number>, answers: number }

export function tally (): Tally {
  return { connections: 0, opened: 0, errors: {}, answers: 0 }
}

/** Raw DHT connections to the daemon, each handed to `attack`, reconnected with a fresh key as they are dropped, until `stop`. */
export function attackers (bootstrap: Bootstrap, publicKey: Buffer, count: number, attack: (conn: any) => void, t: Tally, opts: { read?: boolean } = {}): { opened: Promise<void>, stop: () => Promise<void> } {
  const node = new HyperDHT({ bootstrap, host: '127.0.0.1' })
  let running = true
  let firstOpen = (): void => {}
  const opened = new Promise<void>(resolve => { firstOpen = resolve })
  const open = new Set<any>()
  const connectOne = (): void => {
    if (!running) return
    const conn = (node as any).connect(publicKey, { keyPair: HyperDHT.keyPair() })
    open.add(conn)
    t.connections++
    conn.on('error', () => {})
    conn.rawStream?.on?.('error', () => {})
    // a dial the daemon never saw (no announcement within 3 s) is dialed again, as the client library does
    const unseen = setTimeout(() => conn.destroy(), 3000)
    if (opts.read !== false) {
      conn.on('data', (d: Buffer) => {
        clearTimeout(unseen)
        const f = JSON.parse(d.toString())
        if (f.type === 'error') t.errors[f.code] = (t.errors[f.code] ?? 0) + 1
      })
    }
    conn.once('open', () => {
      if (opts.read === false) clearTimeout(unseen)
      t.opened++
      firstOpen()
      attack(conn)
    })
    conn.once('close', () => {
      clearTimeout(unseen)
      open.delete(conn)
      if (running) setTimeout(connectOne, 50)
    })
  }
  for (let i = 0; i < count; i++) connectOne()
  return {
    opened,
    stop: async () => {
      running = false
      for (const c of open) c.destroy()
      await node.destroy()
    }
  }
}

export interface Fill { roomName: string, count: number, message: string }

/** Writes each room's messages (with ids) through `clients` fresh connections, `window` in flight on each. */
export async function fill (net: Testnet, rooms: Fill[], clients = 8, window = 1000): Promise<void> {
  const writers = Array.from({ length: Math.min(clients, rooms.length) }, () => new Client(net))
  await Promise.all(writers.map(c => c.connect()))
  await Promise.all(writers.map(async (c, k) => {
    const mine = rooms.filter((_, i) => i % writers.length === k)
    const frames = mine.flatMap(r => Array.from({ length: r.count }, (_, i) => ({ type: 'message', roomName: r.roomName, message: r.message, id: `f${i}` })))
    let sent = 0
    let acked = 0
    await new Promise<void>((resolve, reject) => {
      const more = (): void => {
        while (sent < frames.length && sent - acked < window) c.send(frames[sent++])
      }
      c.onFrame = f => {
        if (f.type === 'error') reject(new Error(`fill: ${f.code} ${f.message}`))
        if (f.type !== 'message-ack') return
        if (++acked === frames.length) resolve()
        else more()
      }
      more()
    })
  }))
  await Promise.all(writers.map(c => c.swarm.destroy()))
}

/** One value of the daemon's /metrics (summed over the series that carry `labels`). */
export async function metric (monitorUrl: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${monitorUrl}/metrics`)).text()
  let sum = 0
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    if (Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`))) sum += Number(m[3])
  }
  return sum
}

export function mb (bytes: number): number {
  return Math.round(bytes / 1024 / 1024 * 10) / 10
}
