// The types of package.json's "#events": Node's EventEmitter, whose API bare-events has on Bare.
export { EventEmitter } from 'node:events'
