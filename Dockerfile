# syntax=docker/dockerfile:1
# One Dockerfile for every image of the blog: build with --target <service>
# (posts, comments, query, moderation, event-bus, client). All of them share
# the dependency layer (cargo-chef) and the one `blog` binary.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG NODE_IMAGE=node:20.19.5-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

# The dependency graph alone, so the expensive layer below is rebuilt only
# when Cargo.toml or Cargo.lock change.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin blog \
    && cp target/release/blog /usr/local/bin/blog

FROM ${NODE_IMAGE} AS client-build
WORKDIR /client
COPY client/package.json client/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY client/ ./
RUN npm run build

# `skaffold dev` only: the Vite dev server, whose sources skaffold syncs in.
FROM ${NODE_IMAGE} AS client-dev
WORKDIR /client
COPY client/package.json client/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY client/ ./
RUN chown -R 1000:1000 /client
USER 1000:1000
EXPOSE 3000
CMD ["npm", "run", "dev", "--", "--host", "0.0.0.0", "--port", "3000", "--strictPort"]

# Distroless: no shell, no package manager; runs as uid 65532.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /usr/local/bin/blog /usr/local/bin/blog
ENV BLOG_HOST=0.0.0.0 \
    BLOG_DATA_DIR=/data
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/blog", "serve"]

FROM runtime AS posts
EXPOSE 4000
CMD ["posts"]

FROM runtime AS comments
EXPOSE 4001
CMD ["comments"]

FROM runtime AS query
EXPOSE 4002
CMD ["query"]

FROM runtime AS moderation
EXPOSE 4003
CMD ["moderation"]

FROM runtime AS event-bus
EXPOSE 4005
CMD ["event-bus"]

FROM runtime AS client
COPY --from=client-build /client/dist /app/client
ENV BLOG_CLIENT_DIR=/app/client
EXPOSE 3000
CMD ["client"]
