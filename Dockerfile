# Build stage: dev dependencies, compile TypeScript to dist/
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Runtime stage: production dependencies and dist/ only, as a non-root user
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    STORAGE_DIR=/data
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# node is PID 1's only child of tini-less exec form, so SIGTERM reaches the daemon directly
STOPSIGNAL SIGTERM
CMD ["node", "dist/bin.js"]
