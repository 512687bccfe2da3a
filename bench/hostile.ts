// npm run bench:hostile [-- --seconds 10 --rate 50]
// A good client's ack latency and the daemon's RSS, first quiet, then while strangers attack at full speed:
// half-sent 16 MiB frames (128 KiB of each sent), sync-requests for 1,000 messages of 60 kB, silent connections, and rooms created
// as fast as their budgets allow. The daemon runs with its default limits (only MAX_PEERS_PER_HOST is off: every
// peer here connects from 127.0.0.1). Everything stays on 127.0.0.1 and stops by itself.
import { fork } from 'node:child_process'
import { once } from 'node:events'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import HyperDHT from 'hyperdht'
import createTestnet from 'hyperdht/testnet.js'
import { Client, Daemon, build, cleanups, runBench, percentile, round2, sleep, stats, tempDir } from './harness.js'

interface Options { seconds: number, rate: number }

function parseArgs (argv: string[]): Options {
  const o: Options = { seconds: 10, rate: 50 }
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2)
    const n = Number(inline ?? argv[++i])
    if (flag === '--seconds') o.seconds = n
    else if (flag === '--rate') o.rate = n
    else throw new Error(`unknown flag ${argv[i]}`)
  }
  return o
}

/** Sends `rate` messages a second for `seconds` and resolves with the ack latencies' p50, p99 and max. */
async function latency (client: Client, seconds: number, rate: number, tag: string): Promise<{ p50: number, p99: number, max: number, acked: number }> {
  const count = Math.round(seconds * rate)
  const sentAt = new Array<number>(count)
  const took: number[] = []
  const done = new Promise<void>((resolve, reject) => {
    client.onFrame = f => {
      if (f.type === 'error') reject(new Error(`good client refused: ${f.code} ${f.message}`))
      if (f.type !== 'message-ack') return
      took.push(performance.now() - sentAt[Number(f.id.slice(tag.length))])
      if (took.length === count) resolve()
    }
  })
  const t0 = performance.now()
  for (let i = 0; i < count; i++) {
    const wait = t0 + i * 1000 / rate - performance.now()
    if (wait > 1) await sleep(wait)
    sentAt[i] = performance.now()
    client.send({ type: 'message', roomName: 'good-room', message: 'x'.repeat(240), id: `${tag}${i}` })
  }
  await done
  took.sort((a, b) => a - b)
  return { p50: round2(percentile(took, 0.5)), p99: round2(percentile(took, 0.99)), max: round2(took[took.length - 1]), acked: took.length }
}

/** Samples the daemon's RSS every 200 ms until stopped; resolves with the highest. */
function peakRss (daemon: Daemon): { stop: () => Promise<number> } {
  let peak = 0
  let running = true
  const loop = (async () => {
    while (running) {
      peak = Math.max(peak, await daemon.rssMB().catch(() => 0))
      await sleep(200)
    }
  })()
  return { stop: async () => { running = false; await loop; return peak } }
}

/** Raw DHT connections to the daemon, each handed to `attack`, reconnected as they are dropped, until `stop`. */
function attackers (bootstrap: Array<{ host: string, port: number }>, publicKey: Buffer, count: number, attack: (conn: any) => void, tally: Tally): { opened: Promise<void>, stop: () => Promise<void> } {
  const node = new HyperDHT({ bootstrap, host: '127.0.0.1' })
  let running = true
  let firstOpen = (): void => {}
  const opened = new Promise<void>(resolve => { firstOpen = resolve })
  const open = new Set<any>()
  const connectOne = (): void => {
    if (!running) return
    const conn = (node as any).connect(publicKey, { keyPair: HyperDHT.keyPair() })
    open.add(conn)
    tally.connections++
    conn.on('error', () => {})
    conn.rawStream?.on?.('error', () => {})
    // a dial the daemon never saw (no announcement within 3 s) is dialed again, as the client library does
    const unseen = setTimeout(() => conn.destroy(), 3000)
    conn.on('data', (d: Buffer) => {
      clearTimeout(unseen)
      const f = JSON.parse(d.toString())
      if (f.type === 'error') tally.errors[f.code] = (tally.errors[f.code] ?? 0) + 1
    })
    conn.once('open', () => {
      tally.opened++
      firstOpen()
      attack(conn)
    })
    conn.once('close', () => clearTimeout(unseen))
    conn.once('close', () => {
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

interface Tally { connections: number, opened: number, errors: Record<string, number>, answers: number }

/** The attackers' process: every attack at once until SIGTERM, then its tallies as one JSON line. */
async function attack (publicKey: Buffer, bootstrap: Array<{ host: string, port: number }>): Promise<void> {
  const tally = (): Tally => ({ connections: 0, opened: 0, errors: {}, answers: 0 })
  const t = { halfFrames: tally(), syncs: tally(), silent: tally(), rooms: tally() }
  const running = [
    // 1: a frame announced at 16 MiB, 128 KiB of it sent (past the 64 KiB UDX holds before the daemon sees a frame)
    attackers(bootstrap, publicKey, 16, conn => {
      conn.rawStream.write(Buffer.from([0xff, 0xff, 0xff]))
      for (let i = 0; i < 2; i++) conn.rawStream.write(Buffer.alloc(64 * 1024))
    }, t.halfFrames),
    // 2: sync-requests for 1,000 messages of 60 kB, each page followed by the next request
    attackers(bootstrap, publicKey, 8, conn => {
      const ask = (): void => { conn.write(JSON.stringify({ type: 'sync-request', roomName: 'big-room', lastIndex: 0, limit: 1000 })) }
      conn.on('data', (d: Buffer) => {
        const f = JSON.parse(d.toString())
        if (f.type === 'sync-response') t.syncs.answers++
        if (f.type === 'sync-response' || f.type === 'error') setImmediate(ask)
      })
      ask()
    }, t.syncs),
    // 4: connections that never send a frame
    attackers(bootstrap, publicKey, 200, () => {}, t.silent),
    // 6: fresh keys creating rooms as fast as they are let
    attackers(bootstrap, publicKey, 20, conn => {
      const prefix = conn.publicKey.toString('hex').slice(0, 16)
      let n = 0
      const more = (): void => { conn.write(JSON.stringify({ type: 'register-room', roomName: `junk-${prefix}-${n}`, requestId: n++ })) }
      conn.on('data', (d: Buffer) => {
        const f = JSON.parse(d.toString())
        if (f.type === 'room-registered') t.rooms.answers++
        if (f.type === 'room-registered' || f.type === 'error') setTimeout(more, f.type === 'error' ? 100 : 0)
      })
      more()
    }, t.rooms)
  ]
  // every kind of attack is under way (a DHT node's first dials can take seconds) before the good client is measured
  await Promise.all(running.map(r => r.opened))
  process.send!('started')
  await new Promise(resolve => process.once('SIGTERM', resolve))
  process.send!(JSON.stringify(t))
  await Promise.all(running.map(r => r.stop()))
  process.exit(0)
}

async function main (): Promise<void> {
  const o = parseArgs(process.argv.slice(2))
  await build()
  const net = await createTestnet(5, { host: '127.0.0.1' })
  cleanups.push(() => net.destroy())
  const daemon = new Daemon({
    DHT_BOOTSTRAP: net.bootstrap.map(b => `${b.host}:${b.port}`).join(','),
    DHT_HOST: '127.0.0.1',
    HOST: '127.0.0.1',
    PORT: '0',
    STATS_INTERVAL: '0',
    STORAGE_DIR: await tempDir('root-peer-bench-hostile-'),
    MAX_PEERS_PER_HOST: '0'
  }, null)
  cleanups.push(() => daemon.stop())
  const monitor = await daemon.line(l => typeof l.url === 'string')
  const ready = await daemon.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  await daemon.line(l => l.msg === 'announced on the discovery topic')
  const publicKey = Buffer.from(ready.publicKey, 'hex')

  // a room of 60 kB messages for the sync attack, written by four keys within their byte budgets
  const writers = Array.from({ length: 4 }, () => new Client(net))
  await Promise.all(writers.map(c => c.connect()))
  const big = 'y'.repeat(60_000)
  await Promise.all(writers.map((c, k) => new Promise<void>((resolve, reject) => {
    let acked = 0
    c.onFrame = f => {
      if (f.type === 'error') reject(new Error(`writer: ${f.code} ${f.message}`))
      if (f.type === 'message-ack' && ++acked === 50) resolve()
    }
    for (let i = 0; i < 50; i++) c.send({ type: 'message', roomName: 'big-room', message: big, id: `w${k}-${i}` })
  })))
  await Promise.all(writers.map(c => c.swarm.destroy()))

  const good = new Client(net)
  await good.connect()
  const quietRss = peakRss(daemon)
  const quiet = await latency(good, o.seconds, o.rate, 'q')
  const quietPeak = await quietRss.stop()

  // the strangers run in a process of their own, so their work does not slow the good client's event loop
  const strangers = fork(fileURLToPath(import.meta.url), ['--attack', publicKey.toString('hex'), JSON.stringify(net.bootstrap)], { execArgv: ['--import', 'tsx'], stdio: 'inherit' })
  cleanups.push(() => strangers.kill('SIGKILL'))
  const messages: string[] = []
  strangers.on('message', m => messages.push(String(m)))
  await once(strangers, 'message')
  await sleep(2000)
  const hostileRss = peakRss(daemon)
  const hostile = await latency(good, o.seconds, o.rate, 'h')
  const hostilePeak = await hostileRss.stop()
  strangers.kill('SIGTERM')
  await once(strangers, 'exit')
  const tallies = JSON.parse(messages[1])
  const s = await stats(monitor.url)

  const result = {
    goodClient: { rate: o.rate, seconds: o.seconds },
    quiet: { ackMs: quiet, peakRssMB: quietPeak },
    hostile: { ackMs: hostile, peakRssMB: hostilePeak },
    strangers: tallies,
    daemon: { errors: s.counters.errors, droppedPeers: s.counters.droppedPeers, idleDisconnects: s.counters.idleDisconnects, roomsRemoved: s.counters.roomsRemoved, totalRooms: s.totalRooms },
    machine: { nproc: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version }
  }
  console.log(JSON.stringify(result))
  console.log(`quiet    ack p50 ${quiet.p50} ms, p99 ${quiet.p99} ms, max ${quiet.max} ms; peak RSS ${quietPeak} MB`)
  console.log(`hostile  ack p50 ${hostile.p50} ms, p99 ${hostile.p99} ms, max ${hostile.max} ms; peak RSS ${hostilePeak} MB`)
  const t = tallies
  console.log(`strangers: ${t.halfFrames.opened} half-frame connections, ${t.syncs.opened} sync connections (${t.syncs.answers} pages of up to 512 KiB), ${t.silent.opened} silent connections, ${t.rooms.answers} rooms created by ${t.rooms.opened} keys; the daemon's refusals ${JSON.stringify(s.counters.errors)}`)
}

const attackAt = process.argv.indexOf('--attack')
if (attackAt !== -1) {
  attack(Buffer.from(process.argv[attackAt + 1], 'hex'), JSON.parse(process.argv[attackAt + 2])).catch(err => {
    console.error(err)
    process.exit(1)
  })
} else {
  runBench(main)
}
