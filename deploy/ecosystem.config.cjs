// pm2 app for the root peer. From the project directory, after `npm ci && npm run build`:
//   pm2 start deploy/ecosystem.config.cjs && pm2 save
//   pm2 logs root-peer          (the daemon prints one JSON object per line)
const path = require('node:path')

const root = path.resolve(__dirname, '..')

module.exports = {
  apps: [{
    name: 'root-peer',
    script: 'dist/bin.js',
    cwd: root,
    interpreter: 'node',
    // one process only: two daemons cannot share a data dir
    exec_mode: 'fork',
    instances: 1,
    env: {
      NODE_ENV: 'production',
      STORAGE_DIR: path.join(root, 'root-peer-storage'),
      HOST: '127.0.0.1',
      PORT: '3000'
    },
    // pm2 stops with SIGINT; the daemon drains for up to 10 s, so wait longer before SIGKILL
    kill_timeout: 15000,
    autorestart: true,
    exp_backoff_restart_delay: 1000,
    max_restarts: 20,
    min_uptime: 10000,
    // the lines are JSON already (NODE_ENV=production): pm2 writes them as they are (to
    // ~/.pm2/logs/root-peer-out.log), with no time prefix (`time`, `log_date_format`) and no
    // `log_type: 'json'` wrapping each line in another JSON object as a string
    merge_logs: true
  }]
}
