// Issue 22, item 8: a stranger's 1-byte messages, each to the next of many sleeping rooms of 10,000 records.
import { Client, round2, sleep } from '../harness.js'
import { attackers, fill, tally, type Scenario, type Stage } from './common.js'

const ROOMS = 50
const RECORDS = 10_000
// far fewer than ROOMS: a message to each room in turn finds it asleep
const MAX_OPEN_ROOMS = 8
const KEYS = 4
const CALIBRATION = 10

/** Daemon CPU (ms) and ack latency (ms) of `count` messages sent one at a time, each to `roomOf(i)`. */
async function oneAtATime (stage: Stage, client: Client, count: number, roomOf: (i: number) => string, tag: string): Promise<{ cpuMs: number, ackMs: number }> {
  const cpu0 = await stage.daemon.cpuSeconds()
  let took = 0
  for (let i = 0; i < count; i++) {
    const t0 = performance.now()
    const f = await new Promise<any>(resolve => {
      client.onFrame = f => { if (f.type === 'message-ack' || f.type === 'error') resolve(f) }
      client.send({ type: 'message', roomName: roomOf(i), message: 'x', id: `${tag}${i}` })
    })
    if (f.type === 'error') throw new Error(`wake: ${f.code} ${f.message}`)
    took += performance.now() - t0
  }
  // what a wake leaves to do after its ack (the evicted room's close) is counted too
  await sleep(500)
  return { cpuMs: round2((await stage.daemon.cpuSeconds() - cpu0) * 1000 / count), ackMs: round2(took / count) }
}

export const wake: Scenario = {
  title: `${KEYS} keys sending 1-byte messages, each to the next of ${ROOMS} sleeping rooms of ${RECORDS.toLocaleString('en')} records (MAX_OPEN_ROOMS ${MAX_OPEN_ROOMS})`,
  env: { MAX_OPEN_ROOMS: String(MAX_OPEN_ROOMS) },
  prefill: net => fill(net, Array.from({ length: ROOMS }, (_, i) => ({ roomName: `wake-${i}`, count: RECORDS, message: 'x' })), 10, 2000),
  async before (stage) {
    const client = new Client(stage.net)
    await client.connect()
    await oneAtATime(stage, client, 1, () => 'wake-open', 'first')
    const open = await oneAtATime(stage, client, 4 * CALIBRATION, () => 'wake-open', 'open')
    const asleep = await oneAtATime(stage, client, CALIBRATION, i => `wake-${i}`, 'asleep')
    await client.swarm.destroy()
    return { openRoom: open, sleepingRoom: asleep }
  },
  async attack ({ publicKey, bootstrap }) {
    const t = { ...tally(), wakes: 0 }
    // past the rooms the calibration woke
    let next = CALIBRATION
    const running = attackers(bootstrap, publicKey, KEYS, conn => {
      let n = 0
      const send = (): void => { conn.write(JSON.stringify({ type: 'message', roomName: `wake-${next++ % ROOMS}`, message: 'x', id: `${conn.publicKey.toString('hex').slice(0, 8)}-${n++}` })) }
      conn.on('data', (d: Buffer) => {
        const f = JSON.parse(d.toString())
        if (f.type === 'message-ack') {
          t.wakes++
          send()
        }
        if (f.type === 'error') setTimeout(send, f.retryAfterMs ?? 100)
      })
      send()
    }, t)
    await running.opened
    return { tallies: () => t, stop: running.stop }
  },
  after: async (stage, t, m) => ({
    ...m.before,
    wakes: t.wakes,
    floodCpuMsPerWake: t.wakes === 0 ? null : round2((m.cpuSeconds - m.quietCpuSeconds) * 1000 / t.wakes),
    daemonCores: round2(m.cpuSeconds / m.seconds)
  }),
  describe: (f: any) => `one at a time: a message to an open room ${f.openRoom.cpuMs} ms of daemon CPU (ack ${f.openRoom.ackMs} ms), to a sleeping room ${f.sleepingRoom.cpuMs} ms (ack ${f.sleepingRoom.ackMs} ms); the flood: ${f.wakes} wakes, ${f.floodCpuMsPerWake} ms of daemon CPU each beyond the quiet phase's, the daemon at ${f.daemonCores} cores`
}
