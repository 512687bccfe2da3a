// pm2 start deploy/ecosystem.config.cjs
module.exports = {
  apps: [{
    name: 'root-peer',
    script: 'dist/bin.js',
    cwd: __dirname + '/..',
    env: {
      NODE_ENV: 'production',
      STORAGE_DIR: './root-peer-storage'
    },
    // the daemon drains within 10 s after SIGINT
    kill_timeout: 15000,
    autorestart: true
  }]
}
