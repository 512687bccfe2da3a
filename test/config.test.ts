import assert from 'node:assert/strict'
import path from 'node:path'
import { test } from 'node:test'
import { ConfigError, parseConfig, replicasOf } from '../src/config.js'
import { runBin } from './helpers.js'

test('defaults, env and flags (flags win), both flag spellings', () => {
  const defaults = parseConfig([], {})
  assert.equal(defaults.storageDir, path.resolve('./root-peer-storage'))
  assert.equal(defaults.bootstrap, null)
  assert.equal(defaults.dhtHost, '0.0.0.0')
  assert.equal(defaults.dhtPort, null)
  assert.equal(defaults.discoveryTopic, 'holepunch-root-peer-discovery')
  assert.equal(defaults.logLevel, 'info')
  assert.equal(defaults.statsInterval, 30_000)
  assert.equal(defaults.maxPeers, 1024)

  const c = parseConfig(['--bootstrap', '127.0.0.1:49737,localhost:10001', '--stats-interval=500ms', '--max-peers', '10'], {
    DHT_BOOTSTRAP: '10.0.0.1:1',
    DHT_HOST: '127.0.0.1',
    DHT_PORT: '40000',
    STATS_INTERVAL: '5m',
    STORAGE_DIR: '/tmp/x'
  })
  assert.deepEqual(c.bootstrap, [{ host: '127.0.0.1', port: 49737 }, { host: 'localhost', port: 10001 }])
  assert.equal(c.dhtHost, '127.0.0.1')
  assert.equal(c.dhtPort, 40000)
  assert.equal(c.statsInterval, 500)
  assert.equal(c.maxPeers, 10)
  assert.equal(c.storageDir, '/tmp/x')
  assert.equal(parseConfig(['--stats-interval', '0'], {}).statsInterval, 0)
  assert.equal(parseConfig(['--stats-interval', '2'], {}).statsInterval, 2000)
  assert.ok(Object.isFrozen(c))
})

test('each bad value throws a ConfigError naming the setting', () => {
  const bad: Array<[string[], Record<string, string>, string]> = [
    [['--bootstrap', 'nothost'], {}, '--bootstrap (DHT_BOOTSTRAP)'],
    [[], { DHT_BOOTSTRAP: '127.0.0.1:0' }, '--bootstrap (DHT_BOOTSTRAP)'],
    [[], { DHT_BOOTSTRAP: '127.0.0.1:70000' }, '--bootstrap (DHT_BOOTSTRAP)'],
    [['--dht-host', 'example'], {}, '--dht-host (DHT_HOST)'],
    [['--dht-port', '0'], {}, '--dht-port (DHT_PORT)'],
    [['--stats-interval', '-5'], {}, '--stats-interval (STATS_INTERVAL)'],
    [['--stats-interval', 'often'], {}, '--stats-interval (STATS_INTERVAL)'],
    [['--max-peers', '0'], {}, '--max-peers (MAX_PEERS)'],
    [['--max-peers', '1.5'], {}, '--max-peers (MAX_PEERS)'],
    [['--log-level', 'loud'], {}, '--log-level (LOG_LEVEL)'],
    [['--frobnicate'], {}, 'unknown option'],
    [['--storage'], {}, '--storage (STORAGE_DIR) needs a value'],
    // retention in a cluster is refused, whichever bound is set
    [['--retention-days', '7'], { CLUSTER_PEERS: 'ab'.repeat(32) }, '--retention-days (RETENTION_DAYS): retention is not supported in a cluster'],
    [[], { RETENTION_MESSAGES: '100', CLUSTER_PEERS: 'ab'.repeat(32) }, '--retention-messages (RETENTION_MESSAGES): retention is not supported in a cluster']
  ]
  for (const [argv, env, named] of bad) {
    assert.throws(() => parseConfig(argv, env), (err: unknown) => err instanceof ConfigError && err.message.includes(named), JSON.stringify({ argv, env }))
  }
})

test('the entry point exits 2 with one line naming the setting; --help exits 0 and lists every setting', async () => {
  for (const [args, env, named] of [
    [['--bootstrap', 'nothost'], {}, 'DHT_BOOTSTRAP'],
    [['--stats-interval', '-1'], {}, 'STATS_INTERVAL'],
    [['--whatever'], {}, '--whatever'],
    [[], { MAX_PEERS: 'lots' }, 'MAX_PEERS'],
    [['frobnicate'], {}, 'unknown command']
  ] as Array<[string[], Record<string, string>, string]>) {
    const { code, stdout, stderr } = await runBin(args, env)
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`)
    assert.equal(stdout, '')
    const lines = stderr.trim().split('\n')
    assert.equal(lines.length, 1, stderr)
    assert.ok(lines[0].includes(named), lines[0])
  }
  const help = await runBin(['--help'])
  assert.equal(help.code, 0)
  for (const env of ['STORAGE_DIR', 'DHT_BOOTSTRAP', 'DHT_HOST', 'DHT_PORT', 'DISCOVERY_TOPIC', 'LOG_LEVEL', 'STATS_INTERVAL', 'MAX_PEERS']) {
    assert.ok(help.stdout.includes(env), env)
  }
})

test('room and storage settings: MAX_OPEN_ROOMS, MAX_ANNOUNCED_ROOMS, ROOM_IDLE_TIMEOUT, STORAGE_WRITE_BUFFER', () => {
  const defaults = parseConfig([], {})
  assert.equal(defaults.maxOpenRooms, 256)
  assert.equal(defaults.maxAnnouncedRooms, 1000)
  assert.equal(defaults.roomIdleTimeout, 300_000)
  assert.equal(defaults.storageWriteBuffer, 8 * 1024 * 1024)
  const c = parseConfig(['--max-open-rooms', '3', '--room-idle-timeout=90s', '--storage-write-buffer', '4MiB'], { MAX_ANNOUNCED_ROOMS: '0' })
  assert.deepEqual([c.maxOpenRooms, c.maxAnnouncedRooms, c.roomIdleTimeout, c.storageWriteBuffer], [3, 0, 90_000, 4 * 1024 * 1024])
  for (const [argv, named] of [
    [['--max-open-rooms', '0'], 'MAX_OPEN_ROOMS'],
    [['--max-announced-rooms', '-1'], 'MAX_ANNOUNCED_ROOMS'],
    [['--room-idle-timeout', '500ms'], 'ROOM_IDLE_TIMEOUT'],
    [['--storage-write-buffer', '10'], 'STORAGE_WRITE_BUFFER']
  ] as Array<[string[], string]>) {
    assert.throws(() => parseConfig(argv, {}), (err: unknown) => err instanceof ConfigError && err.message.includes(named), argv.join(' '))
  }
})

test('FAILOVER_AFTER: 5s by default, 0 turns it off, at least the 3 s member link timeout; a wrong value exits 2 with one line naming it', async () => {
  assert.equal(parseConfig([], {}).failoverAfter, 5000)
  assert.equal(parseConfig(['--failover-after', '0'], {}).failoverAfter, 0)
  assert.equal(parseConfig([], { FAILOVER_AFTER: '3s' }).failoverAfter, 3000)
  assert.equal(parseConfig([], { FAILOVER_AFTER: '10' }).failoverAfter, 10_000)
  for (const value of ['2s', '2999ms', 'soon', '-1']) {
    assert.throws(() => parseConfig(['--failover-after', value], {}), (err: unknown) => err instanceof ConfigError && err.message.includes('--failover-after (FAILOVER_AFTER)'), value)
  }
  const { code, stdout, stderr } = await runBin([], { FAILOVER_AFTER: '1s' })
  assert.equal(code, 2, stderr)
  assert.equal(stdout, '')
  const lines = stderr.trim().split('\n')
  assert.equal(lines.length, 1, stderr)
  assert.match(lines[0], /FAILOVER_AFTER\): "1s" is shorter than the member link timeout/)
})

test('REPLICAS: auto (every member, until follows are forwarded) by default, at most the members counting this one; a wrong value exits 2 with one line naming it', async () => {
  const peers = (n: number): string => Array.from({ length: n }, (_, i) => String(i + 1).padStart(2, '0').repeat(32)).join(',')
  assert.equal(parseConfig([], {}).replicas, null)
  assert.equal(replicasOf(parseConfig([], {})), 1)
  assert.equal(replicasOf(parseConfig([], { CLUSTER_PEERS: peers(1) })), 2)
  assert.equal(replicasOf(parseConfig([], { CLUSTER_PEERS: peers(2) })), 3)
  assert.equal(replicasOf(parseConfig([], { CLUSTER_PEERS: peers(4) })), 5)
  assert.equal(replicasOf(parseConfig(['--replicas', 'auto'], { CLUSTER_PEERS: peers(4) })), 5)
  assert.equal(replicasOf(parseConfig(['--replicas', '5'], { CLUSTER_PEERS: peers(4) })), 5)
  assert.equal(replicasOf(parseConfig([], { REPLICAS: '2', CLUSTER_PEERS: peers(4) })), 2)
  assert.equal(replicasOf(parseConfig(['--replicas=1'], {})), 1)
  for (const [argv, env] of [[['--replicas', '0'], {}], [['--replicas', 'two'], {}], [['--replicas', '1.5'], {}], [['--replicas', '-1'], {}], [[], { REPLICAS: '2' }], [['--replicas', '6'], { CLUSTER_PEERS: peers(4) }]] as Array<[string[], Record<string, string>]>) {
    assert.throws(() => parseConfig(argv, env), (err: unknown) => err instanceof ConfigError && err.message.includes('--replicas (REPLICAS)'), JSON.stringify({ argv, env }))
  }
  for (const [env, says] of [[{ REPLICAS: 'many' }, /REPLICAS\)/], [{ REPLICAS: '3', CLUSTER_PEERS: peers(1) }, /REPLICAS\): 3 is more than the 2 members of the cluster/]] as Array<[Record<string, string>, RegExp]>) {
    const { code, stdout, stderr } = await runBin([], env)
    assert.equal(code, 2, stderr)
    assert.equal(stdout, '')
    const lines = stderr.trim().split('\n')
    assert.equal(lines.length, 1, stderr)
    assert.match(lines[0], says)
  }
})
