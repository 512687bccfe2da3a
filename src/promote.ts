import Corestore from 'corestore'
import HyperDHT from 'hyperdht'
import type { BootstrapNode } from './config.js'
import { SWARM_KEY_PAIR } from './cluster.js'
import { coreName, Rooms } from './rooms.js'

/** How long `promote` tries to reach the old primary before it counts it as gone. */
export const REACH_TIMEOUT = 10_000
const COPY_BATCH = 256

export interface PromoteOptions {
  storageDir: string
  /** the gone member's public key, hex */
  from: string
  bootstrap: BootstrapNode[] | null
  dhtHost: string
  reachTimeout?: number
}

export interface Promoted {
  roomName: string
  messages: number
  key: string
}

/** Why a promotion was refused; the CLI prints `message` and exits 1. */
export class PromoteError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'PromoteError'
  }
}

/**
 * `root-peer promote --from KEY`, on a stopped mirror: takes over every room the member KEY was
 * primary for. Refuses while KEY answers on the DHT. Each room's mirrored blocks are appended, in
 * order, into a core this root peer owns, so every index keeps its meaning; the room index records
 * the room as this root peer's (with `promotedFrom`), and on its next start it tells the other
 * members, which follow the new core.
 */
export async function promote (opts: PromoteOptions): Promise<Promoted[]> {
  const { storageDir, from, bootstrap, dhtHost, reachTimeout = REACH_TIMEOUT } = opts
  const store = new Corestore(storageDir)
  await store.ready()
  try {
    const keyPair = await store.createKeyPair(SWARM_KEY_PAIR)
    if (keyPair.publicKey.toString('hex') === from) throw new PromoteError('--from is this root peer\'s own key')
    if (await reachable(from, keyPair, bootstrap, dhtHost, reachTimeout)) {
      throw new PromoteError(`the member ${from} is reachable: promote only a member that is gone for good (stop it, or wait until it is unreachable)`)
    }
    const rooms = new Rooms(store)
    await rooms.load(null)
    const promoted: Promoted[] = []
    try {
      for (const info of [...rooms.list()]) {
        if (info.primary !== from) continue
        const mirrored = store.get({ key: Buffer.from(info.coreKey!, 'hex') })
        const own = store.get({ name: coreName(info.name) })
        await Promise.all([mirrored.ready(), own.ready()])
        if (mirrored.contiguousLength < mirrored.length) {
          throw new PromoteError(`room ${info.name}: only ${mirrored.contiguousLength} of the ${mirrored.length} blocks known are held here; promote the member that holds them all`)
        }
        // a copy interrupted before is continued where it stopped
        for (let at = own.length; at < mirrored.length; at += COPY_BATCH) {
          const blocks: Buffer[] = []
          for (let i = at; i < Math.min(mirrored.length, at + COPY_BATCH); i++) blocks.push((await mirrored.get(i, { wait: false }))!)
          await own.append(blocks)
        }
        const key = own.key.toString('hex')
        await rooms.promote(info.name, key, from)
        promoted.push({ roomName: info.name, messages: own.length, key })
        await Promise.all([mirrored.close(), own.close()])
      }
    } finally {
      await rooms.close()
    }
    return promoted
  } finally {
    await store.close()
  }
}

/** True when a connection to `key` opens within `timeout` ms. */
async function reachable (key: string, keyPair: { publicKey: Buffer, secretKey: Buffer }, bootstrap: BootstrapNode[] | null, host: string, timeout: number): Promise<boolean> {
  const dht = new HyperDHT({ ...(bootstrap ? { bootstrap } : {}), host, ephemeral: true })
  try {
    const socket = dht.connect(Buffer.from(key, 'hex'), { keyPair })
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
