// A two-member cluster: ack latency with MIN_MIRRORS (a room of the member the client talks to, and a
// forwarded one), then memory holding many rooms: each member is primary for about half of them
// (rendezvous hashing) and mirrors the rest.
// Not part of npm test: `npm run bench:mirror [-- --min-mirrors K --acks N --rooms N --settle S]`.
import createTestnet from 'hyperdht/testnet.js'
import os from 'node:os'
import { readPublicKey } from '../src/cluster/cluster.js'
import { rendezvousOwner } from '../src/cluster/rendezvous.js'
import { Client, Daemon, benchEnv, build, cleanup, cleanups, heapMB, percentile, sleep, stats, tempDir } from './harness.js'

function option (name: string, fallback: number): number {
  const at = process.argv.indexOf(name)
  return at === -1 ? fallback : Number(process.argv[at + 1])
}

const MIN_MIRRORS = option('--min-mirrors', 1)
/** acked messages, one at a time, per latency room */
const ACKS = option('--acks', 500)
const ROOMS = option('--rooms', 5000)
/** seconds after the last room caught up: idle rooms sleep after 5 s; Hypercore frees a core some 30–50 s after neither side downloads it */
const SETTLE = option('--settle', 90)
const WINDOW = 200

async function activeMirrored (url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text()
  const m = /^root_peer_mirrored_rooms_active (\d+)$/m.exec(text)
  return m === null ? NaN : Number(m[1])
}

async function main (): Promise<void> {
  await build()
  const net = await createTestnet(5, { host: '127.0.0.1' })
  cleanups.push(() => net.destroy())
  const dirs = [await tempDir('root-peer-mirror-bench-a-'), await tempDir('root-peer-mirror-bench-b-')]
  const keys = [await readPublicKey(dirs[0]), await readPublicKey(dirs[1])]
  const members = dirs.map((dir, i) => {
    const d = new Daemon({
      ...benchEnv(net),
      STORAGE_DIR: dir,
      CLUSTER_PEERS: keys[1 - i],
      ROOM_IDLE_TIMEOUT: '5s',
      MIN_MIRRORS: String(MIN_MIRRORS),
      MAX_ROOMS: String(ROOMS * 2 + 10)
    }, null)
    cleanups.push(() => d.stop())
    return d
  })
  const urls: string[] = []
  for (const d of members) urls.push((await d.line(l => typeof l.url === 'string')).url)
  await Promise.all(members.map((d, i) => d.line(l => l.msg === 'cluster member connected' && l.member === keys[1 - i])))

  const client = new Client(net)
  await client.connect()
  const announced = client.conn.remotePublicKey.toString('hex')

  // ack latency, one message at a time: a room of the member the client talks to, then one of the other member (forwarded)
  const latency: Record<string, { p50: number, p99: number, max: number }> = {}
  for (const [label, owner] of [['own', announced], ['forwarded', keys.find(k => k !== announced)!]] as const) {
    let room = ''
    for (let i = 0; rendezvousOwner(room = `latency-${label}-${i}`, keys) !== owner; i++);
    const times: number[] = []
    for (let i = 0; i < ACKS; i++) {
      const t = performance.now()
      await new Promise<void>((resolve, reject) => {
        client.onFrame = f => {
          if (f.type === 'error') reject(new Error(`${f.code}: ${f.message}`))
          if (f.type === 'message-ack') resolve()
        }
        client.send({ type: 'message', roomName: room, message: `l${i}`, id: `l${i}` })
      })
      times.push(performance.now() - t)
    }
    times.sort((a, b) => a - b)
    const ms = (x: number): number => Math.round(x * 100) / 100
    latency[label] = { p50: ms(percentile(times, 0.5)), p99: ms(percentile(times, 0.99)), max: ms(times[times.length - 1]) }
  }
  if (ROOMS === 0) {
    console.log(JSON.stringify({ minMirrors: MIN_MIRRORS, acks: ACKS, latencyMs: latency, loadavg: os.loadavg() }, null, 2))
    return
  }

  // one message in each of ROOMS new rooms, WINDOW at a time; a room owned by the other member is forwarded
  const t0 = performance.now()
  for (let at = 0; at < ROOMS; at += WINDOW) {
    const batch = Math.min(WINDOW, ROOMS - at)
    await new Promise<void>((resolve, reject) => {
      let acked = 0
      client.onFrame = f => {
        if (f.type === 'error') reject(new Error(`${f.code}: ${f.message}`))
        if (f.type === 'message-ack' && ++acked === batch) resolve()
      }
      for (let r = at; r < at + batch; r++) client.send({ type: 'message', roomName: `mirror-bench-${r}`, message: `m${r}`, id: `m${r}` })
    })
  }
  const ingestMs = Math.round(performance.now() - t0)
  // both members hold every room and every message
  while (true) {
    const all = await Promise.all(urls.map(u => stats(u)))
    if (all.every(s => s.totalRooms === ROOMS + 2 && s.totalMessages === ROOMS + 2 * ACKS)) break
    await sleep(1000)
  }
  const caughtUpMs = Math.round(performance.now() - t0)
  const atOnce = await Promise.all(members.map(d => d.rssMB()))
  await sleep(SETTLE * 1000)
  const rows = await Promise.all(members.map(async (d, i) => {
    const s = await stats(urls[i])
    return { member: keys[i].slice(0, 8), rssMBAtOnce: atOnce[i], rssMB: await d.rssMB(), heap: await heapMB(urls[i]), openRooms: s.rooms.open, mirroredActive: await activeMirrored(urls[i]) }
  }))
  console.log(JSON.stringify({ minMirrors: MIN_MIRRORS, acks: ACKS, latencyMs: latency, rooms: ROOMS, settleSeconds: SETTLE, ingestMs, caughtUpMs, cpus: os.cpus().length, cpu: os.cpus()[0]?.model, loadavg: os.loadavg(), members: rows }, null, 2))
}

main().then(cleanup, async err => {
  console.error(err)
  await cleanup()
  process.exitCode = 1
})
