/** What RoomTopics needs of the swarm: joining and leaving a topic as a server. */
export interface TopicSwarm {
  join: (name: string) => void
  leave: (name: string) => void
}

export interface RoomTopicsOptions {
  /** topics announced at once; the least recently active is left to announce another */
  maxAnnounced?: number
  /** ms without activity after which a room's topic is left */
  idleTimeout?: number
}

/**
 * The room topics the root peer announces on the DHT: only rooms active recently, at most
 * `maxAnnounced`, least recently active left first. Clients reach the root peer through the
 * discovery topic anyway; a room topic only lets a member who knows nothing else find it.
 */
export class RoomTopics {
  readonly maxAnnounced: number
  readonly idleTimeout: number
  /** room name to last activity (ms), least recently active first */
  private readonly active = new Map<string, number>()
  private swarm: TopicSwarm | null = null

  constructor ({ maxAnnounced = 1000, idleTimeout = 300_000 }: RoomTopicsOptions = {}) {
    this.maxAnnounced = maxAnnounced
    this.idleTimeout = idleTimeout
  }

  get size (): number {
    return this.active.size
  }

  has (name: string): boolean {
    return this.active.has(name)
  }

  /** Joins the topics noted before the swarm existed, and every later one as it comes. */
  attach (swarm: TopicSwarm): void {
    this.swarm = swarm
    for (const name of this.active.keys()) swarm.join(name)
  }

  /** Notes activity in a room (at `at`, default now): its topic is announced, or kept announced. */
  touch (name: string, at = Date.now()): void {
    if (this.maxAnnounced === 0) return
    const known = this.active.has(name)
    if (known) this.active.delete(name)
    this.active.set(name, at)
    if (known) return
    if (this.swarm !== null) this.swarm.join(name)
    if (this.active.size > this.maxAnnounced) this.leave(this.active.keys().next().value as string)
  }

  /** Leaves the topics of rooms idle for longer than the idle timeout. */
  sweep (now = Date.now()): void {
    for (const [name, at] of this.active) {
      if (now - at <= this.idleTimeout) break
      this.leave(name)
    }
  }

  private leave (name: string): void {
    this.active.delete(name)
    if (this.swarm !== null) this.swarm.leave(name)
  }
}
