import Corestore from 'corestore'
import type Hypercore from 'hypercore'
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import { DEFAULT_LIMITS, PROTOCOL_VERSION } from '../protocol/protocol.js'
import { newChallenge } from 'root-peer-client/protocol'
import type { BootstrapNode } from '../config.js'
import { SWARM_KEY_PAIR } from './cluster.js'
import { coreName, Rooms } from '../storage/rooms.js'
import type { RoomState } from '../storage/state-file.js'
import { openStore } from '../storage/data-dir-lock.js'
import { MemberDialer } from './member-dial.js'
import safetyCatch from 'safety-catch'

/** How long `promote` tries to reach the old primary, and to fetch from the others what it lacks. */
export const REACH_TIMEOUT = 10_000
export const CATCH_UP_TIMEOUT = 15_000
const COPY_BATCH = 256

export interface PromoteOptions {
  storageDir: string
  from: string
  bootstrap: BootstrapNode[] | null
  dhtHost: string
  members?: string[]
  reachTimeout?: number
}

export interface Promoted {
  roomName: string
  messages: number
  key: string
}

export class PromoteError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'PromoteError'
  }
}

/** `root-peer promote --from KEY`, on a stopped mirror: takes over the rooms of the gone member KEY. */
export async function promote (opts: PromoteOptions): Promise<Promoted[]> {
  const { storageDir, from, bootstrap, dhtHost, members = [], reachTimeout = REACH_TIMEOUT } = opts
  // the store is the data dir's lock: refused while a daemon holds it
  const store = await openStore(storageDir)
  try {
    const keyPair = await store.createKeyPair(SWARM_KEY_PAIR)
    if (keyPair.publicKey.toString('hex') === from) throw new PromoteError('--from is this root peer\'s own key')
    if (await reachable(from, bootstrap, dhtHost, reachTimeout)) {
      throw new PromoteError(`the member ${from} is reachable: promote only a member that is gone for good (stop it, or wait until it is unreachable)`)
    }
    const rooms = new Rooms(store)
    await rooms.load(null)
    const promoted: Promoted[] = []
    const taken: RoomState[] = []
    for await (const info of rooms.list()) if (info.primary === from) taken.push(info)
    const mirroredCores = taken.map(info => store.get({ key: Buffer.from(info.coreKey!, 'hex') }))
    try {
      await Promise.all(mirroredCores.map(core => core.ready()))
      // an acked block may be on another mirror only (MIN_MIRRORS below the mirrors)
      const others = members.filter(m => m !== from && m !== keyPair.publicKey.toString('hex'))
      if (others.length > 0 && mirroredCores.length > 0) await catchUp(store, keyPair, others, bootstrap, dhtHost, mirroredCores)
      for (const [i, info] of taken.entries()) {
        const mirrored = mirroredCores[i]
        const own = store.get({ name: coreName(info.name) })
        await own.ready()
        if (mirrored.contiguousLength < mirrored.length) {
          throw new PromoteError(`room ${info.name}: only ${mirrored.contiguousLength} of the ${mirrored.length} blocks known are held here; promote the member that holds them all`)
        }
          for (let at = own.length; at < mirrored.length; at += COPY_BATCH) {
          const blocks: Buffer[] = []
          for (let i = at; i < Math.min(mirrored.length, at + COPY_BATCH); i++) blocks.push((await mirrored.get(i, { wait: false }))!)
          await own.append(blocks)
        }
        const key = own.key.toString('hex')
        await rooms.move(info.name, key, undefined, from)
        promoted.push({ roomName: info.name, messages: own.length, key })
        await own.close()
      }
    } finally {
      await Promise.allSettled(mirroredCores.map(core => core.close()))
      await rooms.close()
    }
    return promoted
  } finally {
    await store.close()
  }
}

/** True when a connection to `key` opens within `timeout` ms (from a throwaway key: docs/cluster.md). */
async function reachable (key: string, bootstrap: BootstrapNode[] | null, host: string, timeout: number): Promise<boolean> {
  const dht = new HyperDHT({ ...(bootstrap ? { bootstrap } : {}), host, ephemeral: true })
  try {
    const socket = dht.connect(Buffer.from(key, 'hex'))
    return await new Promise<boolean>(resolve => {
      const timer = setTimeout(() => resolve(false), timeout)
      socket.on('open', () => { clearTimeout(timer); resolve(true) })
      socket.on('error', () => { clearTimeout(timer); resolve(false) })
      socket.on('close', () => { clearTimeout(timer); resolve(false) })
    }).finally(() => socket.destroy())
  } finally {
    await dht.destroy()
  }
}

/** Replicates with the other members until each core holds the longest length any of them has. */
async function catchUp (store: Corestore, keyPair: { publicKey: Buffer, secretKey: Buffer }, members: string[], bootstrap: BootstrapNode[] | null, host: string, cores: Hypercore[]): Promise<void> {
  const swarm = new Hyperswarm({ dht: new HyperDHT({ ...(bootstrap ? { bootstrap } : {}), host, keyPair }), keyPair })
  const announcement = JSON.stringify({ type: 'root-peer-announcement', version: PROTOCOL_VERSION, publicKey: keyPair.publicKey.toString('hex'), limits: DEFAULT_LIMITS, challenge: newChallenge() })
  const linked = new Map<string, NoiseStream>()
  const onConnection = (conn: NoiseStream): void => {
    conn.on('error', noop) // a member whose link fails is dropped on its close event
    const member = conn.remotePublicKey.toString('hex')
    if (!members.includes(member)) {
      conn.destroy()
      return
    }
    linked.set(member, conn)
    conn.on('close', () => { if (linked.get(member) === conn) linked.delete(member) })
    conn.write(announcement)
    conn.once('data', () => store.replicate(conn))
  }
  swarm.on('connection', onConnection)
  await swarm.listen()
  const dialer = new MemberDialer({ self: keyPair.publicKey.toString('hex'), dht: swarm.dht, keyPair, members, linked: member => linked.has(member), onConnection })
  dialer.start()
  const deadline = Date.now() + CATCH_UP_TIMEOUT
  const left = (): number => Math.max(0, deadline - Date.now())
  try {
    await Promise.all(cores.map(async core => {
      while ((core.peers.length < members.length || core.peers.some(p => !p.remoteSynced)) && left() > 0) await sleep(Math.min(50, left()))
      const synced = core.peers.filter(p => p.remoteSynced)
      const longest = Math.max(0, ...synced.map(p => p.remoteLength))
      while (core.length < longest && left() > 0) await withTimeout(core.update({ wait: true }), Math.min(1000, left()))
      if (core.contiguousLength < core.length) await withTimeout(core.download({ start: 0, end: core.length }).done(), left())
      // a member not asked may hold acked blocks this one lacks
      if (synced.length < members.length) {
        throw new PromoteError(`could not fetch this room's blocks from every other member within ${CATCH_UP_TIMEOUT / 1000} s (${synced.length} of ${members.length} answered); run promote again, or leave a member that is gone for good out of CLUSTER_PEERS for the promote run`)
      }
    }))
  } finally {
    dialer.close()
    await swarm.destroy()
  }
}

function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** Resolves when `promise` settles or `ms` pass, whichever is first; never rejects. */
async function withTimeout (promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | null = null
  await Promise.race([promise.catch(safetyCatch), new Promise<void>(resolve => { timer = setTimeout(resolve, ms) })])
  if (timer !== null) clearTimeout(timer)
}

function noop (): void {}
