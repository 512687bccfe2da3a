// The first round's floods at once: half-sent 16 MiB frames, sync-requests for 1,000 messages of 60 kB, silent
// connections, and fresh keys creating rooms as fast as their budgets allow.
import { attackers, fill, tally, type Scenario } from './common.js'

export const mixed: Scenario = {
  title: '16 half-sent 16 MiB frames, 8 sync floods of 60 kB messages, 200 silent connections, 20 keys creating rooms',
  // a room of 200 messages of 60 kB for the sync flood
  prefill: net => fill(net, [{ roomName: 'big-room', count: 200, message: 'y'.repeat(60_000) }]),
  async attack ({ publicKey, bootstrap }) {
    const t = { halfFrames: tally(), syncs: tally(), silent: tally(), rooms: tally() }
    const running = [
      // a frame announced at 16 MiB, 128 KiB of it sent (past the 64 KiB UDX holds before the daemon sees a frame)
      attackers(bootstrap, publicKey, 16, conn => {
        conn.rawStream.write(Buffer.from([0xff, 0xff, 0xff]))
        for (let i = 0; i < 2; i++) conn.rawStream.write(Buffer.alloc(64 * 1024))
      }, t.halfFrames),
      // sync-requests for 1,000 messages of 60 kB, each page followed by the next request
      attackers(bootstrap, publicKey, 8, conn => {
        const ask = (): void => { conn.write(JSON.stringify({ type: 'sync-request', roomName: 'big-room', lastIndex: 0, limit: 1000 })) }
        conn.on('data', (d: Buffer) => {
          const f = JSON.parse(d.toString())
          if (f.type === 'sync-response') t.syncs.answers++
          if (f.type === 'sync-response' || f.type === 'error') setImmediate(ask)
        })
        ask()
      }, t.syncs),
      attackers(bootstrap, publicKey, 200, () => {}, t.silent),
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
    return { tallies: () => t, stop: async () => { await Promise.all(running.map(r => r.stop())) } }
  },
  describe: (f, t) => `${t.halfFrames.opened} half-frame connections, ${t.syncs.opened} sync connections (${t.syncs.answers} pages of up to 512 KiB), ${t.silent.opened} silent connections, ${t.rooms.answers} rooms created by ${t.rooms.opened} keys; the daemon's refusals ${JSON.stringify(f.refusals)}`,
  after: async (stage) => {
    const s = await (await fetch(`${stage.monitorUrl}/stats`)).json() as any
    return { refusals: s.counters.errors, droppedPeers: s.counters.droppedPeers, idleDisconnects: s.counters.idleDisconnects, roomsRemoved: s.counters.roomsRemoved, totalRooms: s.totalRooms }
  }
}
