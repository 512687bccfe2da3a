import Autobase from 'autobase'
import type Corestore from 'corestore'
import Hypercore from 'hypercore'
import ReadyResource from 'ready-resource'
import safetyCatch from 'safety-catch'

/** The control log's cores live apart from the rooms': an Autobase's local core is named 'local' (autobase#374). */
export const CONTROL_NAMESPACE = 'root-peer-control'
/** ms between the `null` nodes each member appends while a decision is not final (Autobase's own acks stall: docs/cluster.md) */
const DRIVE_INTERVAL = 150
/** a decision not final after this many drives is left to the next one (the member may be in a minority) */
const MAX_DRIVES = 200

/** A room's primary changed: `primary` writes it from epoch `epoch` on, in its core `core`, from `fromLength` blocks. */
export interface Decision {
  room: string
  primary: string
  epoch: number
  fromLength: number
  core: string
  /** the primary it was taken over from */
  from: string
}

type Entry = { type: 'members', members: string[] } | ({ type: 'claim' } & Decision)

export type ControlLogErrorCode = 'NOT_A_MEMBER' | 'CONTROL_LOG_CLOSED' | 'BAD_CLAIM'

/** Coded errors of the control log. */
export class ControlLogError extends Error {
  readonly code: ControlLogErrorCode
  constructor (code: ControlLogErrorCode, message: string) {
    super(message)
    this.name = 'ControlLogError'
    this.code = code
  }

  static NOT_A_MEMBER (key: string): ControlLogError {
    return new ControlLogError('NOT_A_MEMBER', `${key} is not a member of this cluster`)
  }

  static CONTROL_LOG_CLOSED (): ControlLogError {
    return new ControlLogError('CONTROL_LOG_CLOSED', 'the control log is closed')
  }

  static BAD_CLAIM (why: string): ControlLogError {
    return new ControlLogError('BAD_CLAIM', `bad claim: ${why}`)
  }
}

export interface ControlLogOptions {
  store: Corestore
  /** this member's swarm key pair: it signs this member's writer core, whose key every member derives */
  keyPair: { publicKey: Buffer, secretKey: Buffer }
  /** every member's public key (hex), this one's included */
  members: readonly string[]
}

/** The key of a member's writer core: a version 1 manifest with the member's key as its one signer. */
export function writerKey (member: string): Buffer {
  return Hypercore.key({ version: 1, signers: [{ publicKey: Buffer.from(member, 'hex') }] })
}

/**
 * The cluster's control log (docs/cluster.md): one Autobase whose indexers are the members, bootstrapped by the
 * member with the lowest key. Its entries are decisions; a decision counts once final (the view's signed length is
 * past it), and of two claims of one room and epoch the first in Autobase's order wins.
 * Events: `decision` (Decision, once final), `log-error` (err).
 */
export class ControlLog extends ReadyResource {
  readonly self: string
  readonly members: readonly string[]
  private readonly opts: ControlLogOptions
  private readonly writers: Map<string, string>
  private base: any = null
  private ns: Corestore | null = null
  /** the final decisions folded so far, per room */
  private readonly decided = new Map<string, Decision>()
  private folded = 0
  private folding: Promise<void> | null = null
  private driveTimer: NodeJS.Timeout | null = null
  private drives = 0
  private seen = ''
  private readonly streams = new Set<unknown>()

  constructor (opts: ControlLogOptions) {
    super()
    this.opts = opts
    this.self = opts.keyPair.publicKey.toString('hex')
    this.members = [...new Set([this.self, ...opts.members])].sort()
    this.writers = new Map(this.members.map(m => [writerKey(m).toString('hex'), m]))
  }

  get bootstrap (): string {
    return this.members[0]
  }

  /** Entries in the log (final or not), and how many of them are final. */
  get lengths (): { length: number, signed: number } {
    const view = this.base?.view
    return view == null ? { length: 0, signed: 0 } : { length: view.length, signed: view.signedLength }
  }

  /** This member is one of the log's indexers (the bootstrap member made it one). */
  get isIndexer (): boolean {
    return this.base?.isIndexer === true
  }

  /** The final decision of `room` with the highest epoch, if any. */
  decision (room: string): Decision | undefined {
    return this.decided.get(room)
  }

  /** The epoch of `room` in the final log (0: no decision yet, its primary is the one it was created at). */
  epoch (room: string): number {
    return this.decided.get(room)?.epoch ?? 0
  }

  /** Replicates the log's wakeup hints on a member link whose stream already carries the store's replication. */
  attach (stream: unknown): void {
    if (this.closing !== null) return
    // a link up before the log is open: its stream is added once it is
    if (this.base === null || !this.base.opened) {
      this.streams.add(stream)
      return
    }
    this.base.wakeupProtocol.addStream(stream)
  }

  /** Appends a claim: this member writes `room` from `epoch` on. Final or not, its fate is told by `decision`. */
  async claim (d: Omit<Decision, 'primary'>): Promise<void> {
    if (this.closing !== null) throw ControlLogError.CONTROL_LOG_CLOSED()
    if (!Number.isInteger(d.epoch) || d.epoch < 1 || !Number.isInteger(d.fromLength) || d.fromLength < 0) throw ControlLogError.BAD_CLAIM('epoch or length')
    await this.base.append({ type: 'claim', ...d, primary: this.self })
    this.drive()
  }

  /** Fetches what the linked members have of the log and folds what became final. */
  async update (): Promise<void> {
    if (this.closing !== null) return
    await this.base.update()
    await this.fold()
  }

  /**
   * Reads the log before this member writes: asks each of `members` for the length of its writer core (up to
   * `timeout` ms), then updates and folds what became final.
   */
  async catchUp (members: readonly string[], timeout: number): Promise<void> {
    if (this.closing !== null || this.ns === null) return
    const cores = members.filter(m => this.members.includes(m) && m !== this.self).map(m => this.ns!.get({ key: writerKey(m) }))
    try {
      await Promise.all(cores.map(async core => {
        let timer: NodeJS.Timeout | null = null
        await Promise.race([
          core.ready().then(() => core.update({ wait: true })).catch(safetyCatch),
          new Promise<void>(resolve => { timer = setTimeout(resolve, timeout) })
        ])
        if (timer !== null) clearTimeout(timer)
      }))
    } finally {
      await Promise.allSettled(cores.map(core => core.close()))
    }
    await this.update()
  }

  protected override async _open (): Promise<void> {
    const members = this.members
    if (!members.includes(this.self)) throw ControlLogError.NOT_A_MEMBER(this.self)
    const writers = this.writers
    const bootstrapWriter = writerKey(this.bootstrap)
    this.ns = this.opts.store.namespace(CONTROL_NAMESPACE)
    this.base = new Autobase(this.ns, bootstrapWriter, {
      keyPair: this.opts.keyPair,
      valueEncoding: 'json',
      // our own drive (below) appends the acks that bring a decision to finality
      ackInterval: 0,
      open: (store: any) => store.get('decisions', { valueEncoding: 'json' }),
      apply: async (nodes: any[], view: any, host: any) => {
        for (const node of nodes) {
          const entry = node.value as Entry | null
          if (entry === null || typeof entry !== 'object') continue
          const from = writers.get(node.from.key.toString('hex'))
          if (from === undefined) continue
          if (entry.type === 'members' && from === members[0]) {
            for (const m of entry.members) if (m !== members[0] && members.includes(m)) await host.addWriter(writerKey(m), { indexer: true })
          } else if (entry.type === 'claim' && entry.primary === from && validDecision(entry)) {
            const { room, primary, epoch, fromLength, core } = entry
            await view.append({ room, primary, epoch, fromLength, core, from: entry.from })
          }
        }
      }
    })
    this.base.on('error', (err: unknown) => this.emit('log-error', err))
    this.base.on('update', () => { this.fold().catch(err => this.emit('log-error', err)) })
    await this.base.ready()
    for (const stream of this.streams) if ((stream as { destroyed?: boolean }).destroyed !== true) this.base.wakeupProtocol.addStream(stream)
    this.streams.clear()
    // the bootstrap member makes the others indexers once; its own first entry
    if (this.self === this.bootstrap && this.base.local.length === 0) {
      await this.base.append({ type: 'members', members })
    }
    this.drive()
  }

  protected override async _close (): Promise<void> {
    if (this.driveTimer !== null) clearTimeout(this.driveTimer)
    this.driveTimer = null
    await this.folding?.catch(safetyCatch)
    await this.base?.close()
  }

  /**
   * Autobase's own acks do not bring a node to finality on time (issue 23: 22 s with stock settings; `ack()` on every
   * update froze the signed length). While an entry is not final (or this member is not an indexer yet: a new
   * indexer must write before it counts), each member that is a writer appends a `null` node every DRIVE_INTERVAL
   * ms: a `null` that references the heads is what signs them. At most MAX_DRIVES without progress (a minority
   * makes none), then it waits for the log to change. Jittered: two members appending in lockstep each reference the
   * other's stale heads, and a decision of two live members of three took 6–30 s to be final instead of some 0.5 s.
   */
  drive (): void {
    if (this.driveTimer !== null || this.closing !== null || this.base === null) return
    if (this.drives >= MAX_DRIVES && !this.progressed()) return
    this.driveTimer = setTimeout(() => {
      this.driveTimer = null
      this.step().catch(err => { if (this.closing === null) this.emit('log-error', err) })
    }, DRIVE_INTERVAL / 2 + Math.random() * DRIVE_INTERVAL)
  }

  private pending (): boolean {
    const base = this.base
    if (base === null || !base.opened) return true
    const view = base.view
    return view.signedLength < view.length || !base.isIndexer || pendingIndexers(base) > 0
  }

  /** True (once) when the log grew or more of it became final since the last look. */
  private progressed (): boolean {
    const { length, signed } = this.lengths
    const now = `${length}/${signed}/${this.isIndexer ? 1 : 0}/${pendingIndexers(this.base)}`
    if (now === this.seen) return false
    this.seen = now
    this.drives = 0
    return true
  }

  private async step (): Promise<void> {
    if (this.closing !== null) return
    await this.base.update()
    await this.fold()
    this.progressed()
    if (!this.pending() || this.drives++ >= MAX_DRIVES) return
    if (this.base.writable === true) await this.base.append(null)
    this.drive()
  }

  private async fold (): Promise<void> {
    while (this.folding !== null) await this.folding
    this.folding = this.foldFinal()
    try {
      await this.folding
    } finally {
      this.folding = null
    }
  }

  /** Folds the final entries in order: a claim counts when its epoch is one past the room's, the first one wins. */
  private async foldFinal (): Promise<void> {
    const view = this.base?.view
    if (view == null || this.closing !== null) return
    const signed: number = view.signedLength
    if (this.folded < signed) this.drive()
    while (this.folded < signed && this.closing === null) {
      const d = await view.get(this.folded) as Decision
      this.folded++
      if ((this.decided.get(d.room)?.epoch ?? 0) + 1 !== d.epoch) continue
      this.decided.set(d.room, d)
      this.emit('decision', d)
    }
    if (this.pending()) this.drive()
  }
}

/** Indexers added to the system that do not count yet (Autobase 7.28 internals, as its own `ack` reads them). */
function pendingIndexers (base: any): number {
  const added: number = base?._applyState?.system?.indexers?.length ?? 0
  const counted: number = base?.linearizer?.indexers?.length ?? 0
  return Math.max(0, added - counted)
}

function validDecision (d: any): d is Decision {
  const hex = (s: unknown): boolean => typeof s === 'string' && /^[0-9a-f]{64}$/.test(s)
  return typeof d.room === 'string' && hex(d.primary) && hex(d.core) && hex(d.from) &&
    Number.isInteger(d.epoch) && d.epoch >= 1 && Number.isInteger(d.fromLength) && d.fromLength >= 0
}
