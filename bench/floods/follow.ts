// Issue 22, items 3 and 7: follows of peers that never read, and how much one follow token delivers.
import { Client } from '../harness.js'
import { attackers, fill, mb, tally, type Scenario } from './common.js'

const CONNECTIONS = 16
// MAX_FOLLOWS by default: one follow of each room
const ROOMS = 64
// 120 records of about 4.6 kB: a first page of maxPageBytes (512 KiB) in each room
const PAGE_ROOM_MESSAGES = 120
const LONG_ROOM_MESSAGES = 4000
const MESSAGE = 'f'.repeat(4500)

export const follow: Scenario = {
  title: `${CONNECTIONS} keys following ${ROOMS} rooms of 540 kB each and never reading; before it, one follow of an 18 MB room`,
  prefill: net => fill(net, [
    ...Array.from({ length: ROOMS }, (_, i) => ({ roomName: `page-${i}`, count: PAGE_ROOM_MESSAGES, message: MESSAGE })),
    { roomName: 'long-room', count: LONG_ROOM_MESSAGES, message: MESSAGE }
  ]),
  // one follow (one RATE_SYNCS token) of the long room, before the flood: what it delivers until follow-live
  async before (stage) {
    const client = new Client(stage.net)
    await client.connect()
    const o = { pages: 0, messages: 0, bytes: 0, live: false, ms: 0 }
    const t0 = performance.now()
    client.conn.on('data', (d: Buffer) => { o.bytes += d.length })
    await new Promise<void>(resolve => {
      const timer = setTimeout(resolve, 30_000)
      client.onFrame = f => {
        if (f.type === 'follow-messages') {
          o.pages++
          o.messages += f.messages.length
        }
        if (f.type === 'follow-live' || f.type === 'error') {
          o.live = f.type === 'follow-live'
          clearTimeout(timer)
          resolve()
        }
      }
      client.send({ type: 'follow', roomName: 'long-room', requestId: 'one' })
    })
    o.ms = Math.round(performance.now() - t0)
    await client.swarm.destroy()
    return { oneToken: o }
  },
  async attack ({ publicKey, bootstrap }) {
    const t = { nonReaders: tally(), followsSent: 0 }
    // no data listener: the stream is never read, as a peer that stopped reading
    const nonReaders = attackers(bootstrap, publicKey, CONNECTIONS, conn => {
      for (let i = 0; i < ROOMS; i++) conn.write(JSON.stringify({ type: 'follow', roomName: `page-${i}`, requestId: i }))
      t.followsSent += ROOMS
    }, t.nonReaders, { read: false })
    await nonReaders.opened
    return { tallies: () => t, stop: nonReaders.stop }
  },
  describe: (f: any, t) => `${t.nonReaders.opened} non-reading connections sent ${t.followsSent} follows (refused ${JSON.stringify(t.nonReaders.errors)}); RSS +${f.growthMB} MB, ${f.perConnectionMB} MB a connection; before the flood, one follow token delivered ${f.oneTokenMB} MB (${f.oneToken.messages} messages, ${f.oneToken.pages} pages${f.oneToken.live ? ', to follow-live' : ', no follow-live within 30 s'}) in ${f.oneToken.ms} ms against one sync page of at most 0.5 MB`,
  after: async (stage, t, m) => {
    const growth = Math.max(0, m.peakMB - m.quietPeakMB)
    const { oneToken } = m.before as { oneToken: { bytes: number } }
    return { growthMB: Math.round(growth * 10) / 10, perConnectionMB: Math.round(growth / CONNECTIONS * 10) / 10, ...m.before, oneTokenMB: mb(oneToken.bytes) }
  }
}
