// root-peer-client/protocol: what the client and the daemon (root-peer) both speak, kept here once
export * from './discovery.js'
export * from './errors.js'
export * from './frame-types.js'
export * from './room-auth.js'
export * from './token-bucket.js'
