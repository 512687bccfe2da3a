import type Hyperswarm from 'hyperswarm'
import type { NoiseStream } from 'hyperswarm'

/** How long a new connection to a root peer may go without a packet before it is dropped, at first. */
const SILENCE_TIMEOUT = 2000
const MAX_SILENCE_TIMEOUT = 16_000

/**
 * Drops a connection to a root peer over which no packet ever came back, and dials it again. hyperdht
 * 6.33-6.34 can open a stream to a server that has just aborted its side: that stream stays silent until UDX
 * gives up, ~13 s later, and Hyperswarm's next dial waits out a backoff besides (docs/client.md, "Connecting").
 * A peer that acked anything is alive and is left alone, however slow its first frame. The wait doubles after
 * each dropped connection, so a crowd of clients cannot redial a busy root peer in a loop.
 */
export class ConnectWatchdog {
  private timeout = SILENCE_TIMEOUT

  watch (conn: NoiseStream, swarm: Hyperswarm): void {
    const timer = setTimeout(() => {
      done()
      if (conn.rawStream.packetsReceived > 0) return
      this.timeout = Math.min(this.timeout * 2, MAX_SILENCE_TIMEOUT)
      // once Hyperswarm has let go of the connection, an explicit peer is dialed without its backoff (a client
      // with another connection, to its root peer or an app's peers, leaves the redial to Hyperswarm)
      conn.once('close', () => {
        if (!swarm.destroyed && swarm.connections.size === 0) swarm.joinPeer(conn.remotePublicKey)
      })
      conn.destroy()
    }, this.timeout)
    const done = (): void => {
      clearTimeout(timer)
      conn.off('data', heard)
      conn.off('close', done)
    }
    const heard = (): void => {
      this.timeout = SILENCE_TIMEOUT
      done()
    }
    conn.on('data', heard)
    conn.on('close', done)
  }
}
