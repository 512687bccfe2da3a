/**
 * root-peer/client, the old path of the chat app's client.
 * @deprecated since 1.1.0: import from `root-peer-client` (its own package, without the daemon's dependencies);
 * this path re-exports it for one more release (docs/client.md#the-package).
 */
export * from 'root-peer-client'
