# Build stage: every dependency, TypeScript compiled to dist/
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY packages/client/package.json ./packages/client/
COPY packages/dev-tools/package.json ./packages/dev-tools/
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY packages/client/tsconfig.build.json packages/client/events.d.ts ./packages/client/
COPY packages/client/src ./packages/client/src
COPY src ./src
RUN npm run build

# Runtime stage: production dependencies and dist/ only, as a non-root user
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production \
    STORAGE_DIR=/data \
    HOST=0.0.0.0 \
    PORT=3000 \
    DHT_PORT=49737
WORKDIR /app
COPY package.json package-lock.json ./
# the client package (root-peer-client, a workspace the daemon depends on): its manifest, and its dist/ below
COPY packages/client/package.json ./packages/client/
# --ignore-scripts: no build here (dist/ comes from the build stage); the native modules ship prebuilt binaries
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY --from=build /app/packages/client/dist ./packages/client/dist
# private to the daemon's user: the data dir holds the key pair's seed and every room (a named
# volume takes this owner and mode)
RUN mkdir -p /data && chown node:node /data && chmod 700 /data
USER node
VOLUME ["/data"]
# the monitor (HTTP, HOST=0.0.0.0 inside the container): publish it only to localhost or a
# private network, e.g. -p 127.0.0.1:3000:3000, and give it a token at run time (never in the
# image): -e MONITOR_TOKEN=<openssl rand -hex 32>; the HEALTHCHECK's /health needs none
EXPOSE 3000
# the DHT's UDP socket (DHT_PORT), for a fixed port mapping: -p 49737:49737/udp
EXPOSE 49737/udp
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/health').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# exec form: node is PID 1 and gets SIGTERM itself (the daemon handles it: drain, save, exit 0
# within 10 s; give `docker stop` more than that: -t 20)
STOPSIGNAL SIGTERM
CMD ["node", "dist/bin.js"]
