import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import type { Testnet } from 'hyperdht/testnet.js'
import { RawPeer, assertPresent, bootstrapEnv, daemon, findTool, skipUnlessCI, teardown, testnet, tmpDir } from './helpers.js'

const STRACE = findTool('strace')
const noStrace = STRACE === null ? 'strace (apt-get install -y strace)' : null
const MESSAGES = 30

interface Call { at: number, call: string, file: string }

/**
 * A daemon run under strace, which notes each write, fsync and fdatasync of any of its threads (with the file's path,
 * and the time it was entered) in a file; MESSAGES messages sent one at a time, each with the times it was sent and
 * its ack came back; then SIGTERM. Returns the windows and the calls.
 */
async function tracedRun (t: any, net: Testnet, syncWrites: boolean): Promise<{ windows: Array<[number, number]>, calls: Call[] }> {
  const storage = await tmpDir(t)
  const trace = path.join(await tmpDir(t), 'strace.txt')
  const d = daemon(t, [], { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', RATE_MESSAGES: '0', SYNC_WRITES: String(syncWrites) },
    [STRACE!, '-f', '--seccomp-bpf', '-y', '-ttt', '-e', 'trace=fsync,fdatasync,write,pwrite64,writev', '-o', trace])
  const ready = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  // the daemon is strace's child: signals go to it, and it is killed after the test, whatever strace does
  const pid = ready.pid as number
  assert.notEqual(pid, d.child.pid)
  teardown(t, () => { try { process.kill(pid, 'SIGKILL') } catch {} })
  await d.line(l => l.msg === 'announced on the discovery topic')

  const peer = new RawPeer(net)
  teardown(t, () => peer.close())
  await peer.connectTo(ready.publicKey)
  await peer.nextOfType('root-peer-announcement')
  const windows: Array<[number, number]> = []
  for (let i = 0; i < MESSAGES; i++) {
    const sent = Date.now()
    peer.send({ type: 'message', roomName: 'synced', message: `m${i}`, id: `m${i}` })
    const ack = await peer.next(f => f.id === `m${i}`)
    windows.push([sent, Date.now()])
    assert.equal(ack.type, 'message-ack')
    assert.equal(ack.messageIndex, i)
  }
  await peer.close()
  process.kill(pid, 'SIGTERM')
  // strace exits with its traced command's exit code
  assert.deepEqual(await d.exited, { code: 0, signal: null })

  const calls: Call[] = []
  for (const line of (await fs.readFile(trace, 'utf8')).split('\n')) {
    const m = /^\d+\s+(\d+\.\d+) (fsync|fdatasync|write|pwrite64|writev)\(\d+<([^>]*)>/.exec(line)
    if (m !== null) calls.push({ at: Number(m[1]) * 1000, call: m[2], file: m[3] })
  }
  return { windows, calls }
}

/** The write-ahead log of the store's RocksDB: db/NNNNNN.log */
const isWal = (c: Call): boolean => /\/db\/\d+\.log$/.test(c.file)
const isSync = (c: Call): boolean => c.call === 'fsync' || c.call === 'fdatasync'

test('SYNC_WRITES=true: each message is written to the write-ahead log and the log fsynced between its sending and its ack; SYNC_WRITES=false: written, and never synced while 30 messages are acked (strace of the daemon)', { skip: skipUnlessCI(noStrace) }, async t => {
  assertPresent(noStrace)
  const net = await testnet(t)
  for (const syncWrites of [true, false]) {
    const { windows, calls } = await tracedRun(t, net, syncWrites)
    const wal = calls.filter(isWal)
    // strace's times are in µs, the test's in ms: a call in the window's last ms counts
    const within = ([sent, acked]: [number, number]) => (c: Call): boolean => c.at >= sent && c.at < acked + 1
    const written = windows.filter(w => wal.some(c => !isSync(c) && within(w)(c)))
    const synced = windows.filter(w => {
      const inside = wal.filter(within(w))
      const write = inside.find(c => !isSync(c))
      return write !== undefined && inside.some(c => isSync(c) && c.at >= write.at)
    })
    const during = wal.filter(c => isSync(c) && within([windows[0][0], windows[windows.length - 1][1]])(c))
    const syncs = calls.filter(isSync)
    console.log(`SYNC_WRITES=${String(syncWrites)}: ${MESSAGES} messages acked one at a time; ${written.length} written to the log and ${synced.length} of them synced after that write, before the ack; ` +
      `${during.length} syncs of the log while they were acked; ${syncs.length} syncs in the daemon's life (${[...new Set(syncs.map(c => path.basename(c.file)))].join(', ')})`)
    assert.equal(written.length, MESSAGES, 'each message was written to the log before its ack')
    if (syncWrites) assert.equal(synced.length, MESSAGES, 'each ack came after a sync of the log that followed the message\'s write')
    else assert.equal(during.length, 0, 'no sync of the log while messages were acked')
  }
})
