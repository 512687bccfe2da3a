/** What RoomTopics needs of the swarm: joining and leaving a room's topic as a server. */
export interface TopicSwarm {
  join: (name: string) => void
  leave: (name: string) => void
}

export interface RoomTopicsOptions {
  /** topics announced at once; the least recently active is left to announce another */
  maxAnnounced?: number
  /** ms without activity after which a room's topic is left */
  idleTimeout?: number
  /** topics joined a second at most; the others wait, newest first */
  joinsPerSecond?: number
}

/** How often waiting topics are joined. */
const PUMP_INTERVAL = 100

/**
 * The room topics the root peer announces on the DHT: only rooms active recently, at most
 * `maxAnnounced`, least recently active left first. Clients reach the root peer through the
 * discovery topic anyway; a room topic only lets a member who knows nothing else find it.
 * Joins are paced (`joinsPerSecond`, newest first), so a burst of new rooms does not become a
 * burst of DHT announces, and a room pushed out before its turn never touches the DHT.
 */
export class RoomTopics {
  readonly maxAnnounced: number
  readonly idleTimeout: number
  private readonly joinsPerTick: number
  /** room name to last activity (ms), least recently active first */
  private readonly active = new Map<string, number>()
  /** rooms of `active` whose topic is joined now */
  private readonly joined = new Set<string>()
  private swarm: TopicSwarm | null = null
  private timer: NodeJS.Timeout | null = null

  constructor ({ maxAnnounced = 1000, idleTimeout = 300_000, joinsPerSecond = 100 }: RoomTopicsOptions = {}) {
    this.maxAnnounced = maxAnnounced
    this.idleTimeout = idleTimeout
    this.joinsPerTick = Math.max(1, Math.round(joinsPerSecond * PUMP_INTERVAL / 1000))
  }

  /** Topics announced now. */
  get size (): number {
    return this.joined.size
  }

  /** Starts joining topics: those noted before the swarm existed, and every later one. */
  attach (swarm: TopicSwarm): void {
    this.swarm = swarm
    this.schedule()
  }

  /** Notes activity in a room (at `at`, default now): its topic is announced soon, or kept announced. */
  touch (name: string, at = Date.now()): void {
    if (this.maxAnnounced === 0) return
    const known = this.active.has(name)
    if (known) this.active.delete(name)
    this.active.set(name, at)
    if (known && this.joined.has(name)) return
    if (this.active.size > this.maxAnnounced) this.drop(this.active.keys().next().value as string)
    this.schedule()
  }

  /** Leaves the topics of rooms idle for longer than the idle timeout. */
  sweep (now = Date.now()): void {
    for (const [name, at] of this.active) {
      if (now - at <= this.idleTimeout) break
      this.drop(name)
    }
  }

  close (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    this.swarm = null
  }

  private drop (name: string): void {
    this.active.delete(name)
    if (this.joined.delete(name)) this.swarm?.leave(name)
  }

  private schedule (): void {
    if (this.timer !== null || this.swarm === null || this.joined.size === this.active.size) return
    this.timer = setInterval(() => this.pump(), PUMP_INTERVAL)
    this.timer.unref()
  }

  /** Joins the most recently active waiting topics, up to this tick's share. */
  private pump (): void {
    const swarm = this.swarm
    const waiting: string[] = []
    if (swarm !== null) for (const name of this.active.keys()) if (!this.joined.has(name)) waiting.push(name)
    for (const name of waiting.slice(-this.joinsPerTick)) {
      this.joined.add(name)
      swarm!.join(name)
    }
    if (waiting.length <= this.joinsPerTick && this.timer !== null) {
      clearInterval(this.timer)
      this.timer = null
    }
  }
}
