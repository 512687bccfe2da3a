export interface TopicSwarm {
  join: (name: string) => void
  leave: (name: string) => void
}

export interface RoomTopicsOptions {
  maxAnnounced?: number
  idleTimeout?: number
  joinsPerSecond?: number
}

const PUMP_INTERVAL = 100

/** The room topics announced on the DHT: recently active rooms only, joins paced (docs/performance.md). */
export class RoomTopics {
  readonly maxAnnounced: number
  readonly idleTimeout: number
  private readonly joinsPerTick: number
  // room name to last activity (ms), least recently active first
  private readonly active = new Map<string, number>()
  private readonly joined = new Set<string>()
  private swarm: TopicSwarm | null = null
  private timer: NodeJS.Timeout | null = null

  constructor ({ maxAnnounced = 1000, idleTimeout = 300_000, joinsPerSecond = 100 }: RoomTopicsOptions = {}) {
    this.maxAnnounced = maxAnnounced
    this.idleTimeout = idleTimeout
    this.joinsPerTick = Math.max(1, Math.round(joinsPerSecond * PUMP_INTERVAL / 1000))
  }

  get size (): number {
    return this.joined.size
  }

  attach (swarm: TopicSwarm): void {
    this.swarm = swarm
    this.schedule()
  }

  touch (name: string, at = Date.now()): void {
    if (this.maxAnnounced === 0) return
    const known = this.active.has(name)
    if (known) this.active.delete(name)
    this.active.set(name, at)
    if (known && this.joined.has(name)) return
    if (this.active.size > this.maxAnnounced) this.drop(this.active.keys().next().value as string)
    this.schedule()
  }

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
