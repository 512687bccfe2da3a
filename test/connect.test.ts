import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { test } from 'node:test'
import { RootPeerClient } from 'root-peer-client'
import { ROOT, daemon, runBin, teardown, tmpDir } from './helpers.js'

// the bar: each client connected within 2 s (tens of ms here; a dial that stalls costs 2 s more at best,
// 13 s without the watchdog); a command also starts node and tsx, which a loaded 2-core machine slows
const CONNECT_BOUND = 2000
const COMMAND_BOUND = 5000

/** Runs `root-peer-client` (from src/) to completion: its exit code, output, and how long it took. */
async function clientCli (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string, ms: number }> {
  const started = performance.now()
  const child = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', path.join(ROOT, 'packages/client/src/cli.ts'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c })
  child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c })
  const [code] = await once(child, 'exit')
  return { code, stdout, stderr, ms: performance.now() - started }
}

test('the offline flow: `root-peer testnet`, the daemon, then ten `root-peer-client` commands in a row, each done within the bound; ten library clients in a row, each connected within 2 s', async t => {
  const testnet = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', path.join(ROOT, 'src/bin.ts'), 'testnet', '--port', '0'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] })
  const stopped = once(testnet, 'exit')
  teardown(t, async () => {
    testnet.kill('SIGTERM')
    await stopped
  })
  let printed = ''
  for await (const chunk of testnet.stdout.setEncoding('utf8')) {
    printed += chunk
    if (printed.includes('\n')) break
  }
  const bootstrap = /^DHT_BOOTSTRAP=(\S+)$/m.exec(printed)?.[1]
  assert.ok(bootstrap !== undefined, `the testnet prints DHT_BOOTSTRAP: ${printed}`)

  const d = daemon(t, [], { STORAGE_DIR: await tmpDir(t), DHT_BOOTSTRAP: bootstrap, DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' })
  await d.ready()

  const shared = ['--room', 'lobby', '--bootstrap', bootstrap, '--dht-host', '127.0.0.1']
  const figures: string[] = []
  let sent = 0
  for (let i = 0; i < 10; i++) {
    const command = i % 2 === 0 ? 'send' : 'sync'
    const run = await clientCli(command === 'send' ? ['send', '--message', `hello ${i}`, ...shared] : ['sync', ...shared])
    figures.push(`${command} ${(run.ms / 1000).toFixed(2)} s`)
    assert.equal(run.code, 0, run.stderr)
    const lines = run.stdout.trim().split('\n').map(l => JSON.parse(l))
    if (command === 'send') {
      assert.equal(lines[0].messageIndex, sent++)
    } else {
      assert.deepEqual(lines.map(m => m.message), Array.from({ length: sent }, (_, k) => `hello ${2 * k}`))
    }
  }
  console.log(`ten root-peer-client commands in a row: ${figures.join(', ')}`)
  const slowest = Math.max(...figures.map(f => Number(f.split(' ')[1])))
  assert.ok(slowest * 1000 < COMMAND_BOUND, `slowest ${slowest} s (bound ${COMMAND_BOUND / 1000} s): ${figures.join(', ')}`)

  // the same with the library: a fresh client (its own DHT node and key) each time, from construction to ready
  const connects: number[] = []
  for (let i = 0; i < 10; i++) {
    const started = performance.now()
    const client = new RootPeerClient({ bootstrap: [{ host: '127.0.0.1', port: Number(bootstrap.split(':')[1]) }], dhtHost: '127.0.0.1' })
    await client.ready(30_000)
    connects.push(Math.round(performance.now() - started))
    await client.close()
  }
  console.log(`ten library clients in a row, ms to connected: ${connects.join(', ')}`)
  assert.ok(Math.max(...connects) < CONNECT_BOUND, `slowest ${Math.max(...connects)} ms (bound ${CONNECT_BOUND} ms)`)
})

test('`root-peer testnet` refuses fewer than 4 nodes: with 3, a root peer\'s hole punches are aborted (docs/client.md)', async () => {
  const { code, stderr } = await runBin(['testnet', '--nodes', '3'])
  assert.equal(code, 2)
  assert.match(stderr, /--nodes: "3" is not an integer from 4 to 50/)
})
