// protomux-rpc ships no types; only the parts the cluster channel calls are declared.
declare module 'protomux-rpc' {
  import { EventEmitter } from 'node:events'
  import type { Encoder } from 'compact-encoding'

  export interface RPCOptions {
    id?: Buffer
    protocol?: string
    valueEncoding?: Encoder<any>
    handshake?: unknown
    handshakeEncoding?: Encoder<any>
  }

  /** Events: `open` (the other side opened the channel), `close`, `destroy`. */
  export default class ProtomuxRPC extends EventEmitter {
    constructor (stream: unknown, opts?: RPCOptions)
    readonly opened: boolean
    readonly closed: boolean
    respond<Req, Res> (
      method: string,
      opts: { requestEncoding?: Encoder<any, Req>, responseEncoding?: Encoder<Res, any> },
      handler: (req: Req) => Res | Promise<Res>
    ): this
    request<Req, Res> (
      method: string,
      value: Req,
      opts?: { requestEncoding?: Encoder<Req, any>, responseEncoding?: Encoder<any, Res>, timeout?: number }
    ): Promise<Res>
    event<Req> (method: string, value: Req, opts?: { requestEncoding?: Encoder<Req, any> }): void
    cork (): void
    uncork (): void
    end (): Promise<void>
    /** closes the channel; pending requests reject with `err` (default CHANNEL_DESTROYED) */
    destroy (err?: Error): void
  }
}
