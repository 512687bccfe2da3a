// npm run bench:hostile [-- follow relay wake] [--seconds 10 --rate 50 --dist DIR]
// A good client's ack latency and the daemon's peak RSS, first quiet, then while strangers attack at full speed, for
// each scenario in bench/floods/ on a daemon of its own with its default limits (only MAX_PEERS_PER_HOST is off:
// every peer here connects from loopback). A scenario's rooms are filled first through a daemon with rate limits off,
// which is stopped before the measured one starts on the same data. Everything stays on 127.0.0.0/8 and stops by itself.
import { fork } from 'node:child_process'
import { once } from 'node:events'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import createTestnet from 'hyperdht/testnet.js'
import { Client, Daemon, ROOT, benchEnv, build, cleanup, cleanups, runBench, percentile, round2, sleep, tempDir } from './harness.js'
import type { AttackContext, Measured, Scenario, Stage } from './floods/common.js'
import { follow } from './floods/follow.js'
import { mixed } from './floods/mixed.js'
import { relayBytes, relayHold } from './floods/relay.js'
import { wake } from './floods/wake.js'

const SCENARIOS: Record<string, Scenario> = { mixed, follow, 'relay-bytes': relayBytes, 'relay-hold': relayHold, wake }
const ALIASES: Record<string, string[]> = { relay: ['relay-bytes', 'relay-hold'], all: Object.keys(SCENARIOS) }

interface Options { seconds: number, rate: number, dist: string | null, scenarios: string[] }

function parseArgs (argv: string[]): Options {
  const o: Options = { seconds: 10, rate: 50, dist: null, scenarios: [] }
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) {
      const names = ALIASES[argv[i]] ?? [argv[i]]
      for (const name of names) if (SCENARIOS[name] === undefined) throw new Error(`unknown scenario ${name}: one of ${[...Object.keys(SCENARIOS), ...Object.keys(ALIASES)].join(', ')}`)
      o.scenarios.push(...names)
      continue
    }
    const [flag, inline] = argv[i].split('=', 2)
    const value = inline ?? argv[++i]
    if (flag === '--seconds') o.seconds = Number(value)
    else if (flag === '--rate') o.rate = Number(value)
    // a daemon built elsewhere (e.g. an older commit's dist/, for a before-and-after run): src/ is not built
    else if (flag === '--dist') o.dist = path.resolve(value)
    else throw new Error(`unknown flag ${argv[i]}`)
  }
  if (o.scenarios.length === 0) o.scenarios = ALIASES.all
  return o
}

interface Latency { p50: number, p99: number, max: number, acked: number, sent: number }

/** Sends `rate` messages a second for `seconds` and resolves with the ack latencies' p50, p99 and max. */
async function latency (client: Client, seconds: number, rate: number, tag: string): Promise<Latency> {
  const count = Math.round(seconds * rate)
  const sentAt = new Array<number>(count)
  const took: number[] = []
  let finish = (): void => {}
  const done = new Promise<void>((resolve, reject) => {
    finish = resolve
    client.onFrame = f => {
      if (f.type === 'error') reject(new Error(`good client refused: ${f.code} ${f.message}`))
      if (f.type !== 'message-ack') return
      took.push(performance.now() - sentAt[Number(f.id.slice(tag.length))])
      if (took.length === count) resolve()
    }
  })
  const t0 = performance.now()
  for (let i = 0; i < count; i++) {
    const wait = t0 + i * 1000 / rate - performance.now()
    if (wait > 1) await sleep(wait)
    sentAt[i] = performance.now()
    client.send({ type: 'message', roomName: 'good-room', message: 'x'.repeat(240), id: `${tag}${i}` })
  }
  // a daemon that stops answering ends the phase 30 s after the last message: what never came is `acked` short of `sent`
  const deadline = setTimeout(finish, 30_000)
  await done
  clearTimeout(deadline)
  took.sort((a, b) => a - b)
  if (took.length === 0) return { p50: NaN, p99: NaN, max: NaN, acked: 0, sent: count }
  return { p50: round2(percentile(took, 0.5)), p99: round2(percentile(took, 0.99)), max: round2(took[took.length - 1]), acked: took.length, sent: count }
}

/** The good client's `latency` with the daemon's peak RSS (sampled every 200 ms) and the CPU seconds it used meanwhile. */
async function phase (daemon: Daemon, good: Client, o: Options, tag: string): Promise<{ ackMs: Latency, peakRssMB: number, cpuSeconds: number }> {
  let peak = 0
  let running = true
  const sampling = (async () => {
    while (running) {
      peak = Math.max(peak, await daemon.rssMB().catch(() => 0))
      await sleep(200)
    }
  })()
  const cpu0 = await daemon.cpuSeconds()
  const ackMs = await latency(good, o.seconds, o.rate, tag)
  const cpuSeconds = round2(await daemon.cpuSeconds() - cpu0)
  running = false
  await sampling
  return { ackMs, peakRssMB: peak, cpuSeconds }
}

async function startDaemon (env: Record<string, string>, o: Options): Promise<{ daemon: Daemon, monitorUrl: string, publicKey: Buffer }> {
  const daemon = new Daemon(env, null, o.dist === null ? undefined : path.join(o.dist, 'bin.js'))
  cleanups.push(() => daemon.stop())
  const monitor = await daemon.line(l => typeof l.url === 'string')
  const ready = await daemon.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  await daemon.line(l => l.msg === 'announced on the discovery topic')
  return { daemon, monitorUrl: monitor.url, publicKey: Buffer.from(ready.publicKey, 'hex') }
}

async function runScenario (name: string, o: Options): Promise<Record<string, any>> {
  const sc = SCENARIOS[name]
  const net = await createTestnet(5, { host: '127.0.0.1' })
  cleanups.push(() => net.destroy())
  const storage = { STORAGE_DIR: await tempDir(`root-peer-bench-hostile-${name}-`) }
  const t0 = performance.now()
  if (sc.prefill !== undefined) {
    const filler = await startDaemon({ ...benchEnv(net), ...sc.env, ...storage }, o)
    await sc.prefill(net)
    await filler.daemon.stop()
  }
  const prefillSeconds = round2((performance.now() - t0) / 1000)
  const { DHT_BOOTSTRAP, DHT_HOST, HOST, PORT, STATS_INTERVAL, MAX_PEERS_PER_HOST } = benchEnv(net)
  const { daemon, monitorUrl, publicKey } = await startDaemon({ DHT_BOOTSTRAP, DHT_HOST, HOST, PORT, STATS_INTERVAL, MAX_PEERS_PER_HOST, ...sc.env, ...storage }, o)
  const stage: Stage = { net, daemon, monitorUrl, publicKey }

  const good = new Client(net)
  await good.connect()
  const quiet = await phase(daemon, good, o, 'q')
  const before = sc.before === undefined ? {} : await sc.before(stage)

  // the strangers run in a process of their own, so their work does not slow the good client's event loop
  const ctx = { publicKey: publicKey.toString('hex'), bootstrap: net.bootstrap, relay: good.announcement.relay ?? null }
  const strangers = fork(fileURLToPath(import.meta.url), ['--attack', name, JSON.stringify(ctx)], { execArgv: ['--conditions=source', '--import', 'tsx'], stdio: 'inherit' })
  cleanups.push(() => strangers.kill('SIGKILL'))
  const messages: string[] = []
  strangers.on('message', m => messages.push(String(m)))
  await once(strangers, 'message')
  await sleep(2000)
  const hostile = await phase(daemon, good, o, 'h')
  const during = sc.during === undefined ? {} : await sc.during(stage)
  strangers.kill('SIGTERM')
  const kill = setTimeout(() => strangers.kill('SIGKILL'), 20_000)
  await once(strangers, 'exit')
  clearTimeout(kill)
  const tallies = JSON.parse(messages[1] ?? '{}')
  const measured: Measured = { seconds: o.seconds, cpuSeconds: hostile.cpuSeconds, quietCpuSeconds: quiet.cpuSeconds, quietPeakMB: quiet.peakRssMB, peakMB: hostile.peakRssMB, before }
  const figures = { ...during, ...(sc.after === undefined ? {} : await sc.after(stage, tallies, measured)) }
  return { scenario: name, prefillSeconds, quiet, hostile, figures, strangers: tallies }
}

async function main (): Promise<void> {
  const o = parseArgs(process.argv.slice(2))
  if (o.dist === null) await build()
  const results = []
  for (const name of o.scenarios) {
    const mark = cleanups.length
    const t0 = performance.now()
    const r = await runScenario(name, o)
    // this scenario's daemons, testnet and temp dir go before the next one starts
    while (cleanups.length > mark) {
      try { await cleanups.pop()!() } catch {}
    }
    r.seconds = round2((performance.now() - t0) / 1000)
    results.push(r)
    console.log(JSON.stringify(r))
  }
  const machine = { nproc: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version, date: new Date().toISOString(), daemon: o.dist ?? path.join(ROOT, 'dist') }
  console.log(JSON.stringify({ goodClient: { rate: o.rate, seconds: o.seconds }, machine }))
  console.log('\n| scenario | ack p50 quiet / attack | ack p99 quiet / attack | ack max attack | daemon peak RSS quiet / attack |')
  console.log('|---|---|---|---|---|')
  for (const r of results) {
    const lost = r.hostile.ackMs.acked < r.hostile.ackMs.sent ? ` (${r.hostile.ackMs.acked} of ${r.hostile.ackMs.sent} acked)` : ''
    console.log(`| ${r.scenario} | ${r.quiet.ackMs.p50} / ${r.hostile.ackMs.p50} ms | ${r.quiet.ackMs.p99} / ${r.hostile.ackMs.p99} ms | ${r.hostile.ackMs.max} ms${lost} | ${r.quiet.peakRssMB} / ${r.hostile.peakRssMB} MB |`)
  }
  console.log('')
  for (const r of results) console.log(`${r.scenario} (${SCENARIOS[r.scenario].title}; ${r.seconds} s): ${SCENARIOS[r.scenario].describe(r.figures, r.strangers)}`)
}

/** The strangers' process: one scenario's flood until SIGTERM, then its tallies as one message. */
async function attack (name: string, raw: { publicKey: string, bootstrap: AttackContext['bootstrap'], relay: string | null }): Promise<void> {
  const running = await SCENARIOS[name].attack({ publicKey: Buffer.from(raw.publicKey, 'hex'), bootstrap: raw.bootstrap, relay: raw.relay === null ? null : Buffer.from(raw.relay, 'hex') })
  process.send!('started')
  await new Promise(resolve => process.once('SIGTERM', resolve))
  process.send!(JSON.stringify(running.tallies()))
  await running.stop()
  await cleanup()
  process.exit(0)
}

const attackAt = process.argv.indexOf('--attack')
if (attackAt !== -1) {
  attack(process.argv[attackAt + 1], JSON.parse(process.argv[attackAt + 2])).catch(err => {
    console.error(err)
    process.exit(1)
  })
} else {
  runBench(main)
}
