# syntax=docker/dockerfile:1
#
# One Dockerfile for every image of the blog. Pick the image with --target:
#
#   posts  comments  query  moderation  event-bus   `blog serve <service>`
#   client                                           `blog serve client`, the built React client
#   client-dev                                       Vite's dev server (skaffold dev only)
#
# e.g. `docker build --target posts -t posts .`. Every service image is the
# same `blog` binary on the same distroless base; only CMD and EXPOSE differ,
# so the five service images share all their layers but the last.
# The build stages are shared too: the dependency layer (cargo-chef) is
# rebuilt only when Cargo.toml or Cargo.lock change.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
# Node 24 LTS: its npm 11 installs the client's lock file (Vite 8).
ARG NODE_IMAGE=node:24.11.0-bookworm-slim
# glibc 2.36 like the builder (bookworm); runs as uid 65532 (`nonroot`).
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG CARGO_CHEF_VERSION=0.1.77
# Parallel compile jobs in the Rust stages (`default`: one per core).
# `--build-arg CARGO_BUILD_JOBS=1` keeps a build off a busy machine's cores.
ARG CARGO_BUILD_JOBS=default

# ---------------------------------------------------------------- Rust build
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION
ARG CARGO_BUILD_JOBS
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# The dependency graph alone (recipe.json): it changes only when a manifest
# or the lock file does, so the cook below stays cached across code edits.
FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG CARGO_BUILD_JOBS
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --release --recipe-path recipe.json --bin blog
# Only the Rust sources: an edit under client/ does not rebuild the binary.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin blog \
    && install -D -m 0755 target/release/blog /out/usr/local/bin/blog \
    && install -d -m 0755 /out/data

# -------------------------------------------------------------- client build
# node_modules once, for both the production build and the dev server. The
# image's `node` user (uid 1000) owns the tree so that the dev server can
# write its cache and skaffold can sync sources into it.
FROM ${NODE_IMAGE} AS client-deps
WORKDIR /client
RUN chown 1000:1000 /client
USER 1000:1000
COPY --chown=1000:1000 client/package.json client/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM client-deps AS client-build
COPY --chown=1000:1000 client/ ./
RUN npm run build

# `skaffold dev` only: Vite's dev server; skaffold syncs edits under
# client/src into /client/src and Vite hot-reloads them. Not for production.
FROM client-deps AS client-dev
COPY --chown=1000:1000 client/ ./
ENV NODE_ENV=development
EXPOSE 3000
CMD ["npm", "run", "dev", "--", "--host", "0.0.0.0", "--port", "3000", "--strictPort"]

# ------------------------------------------------------------------ runtime
# Distroless: no shell, no package manager. The binary and an empty /data
# owned by the runtime user (Kubernetes mounts a volume there; `docker run`
# without one still works).
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /out/usr/local/bin/blog /usr/local/bin/blog
COPY --from=builder --chown=65532:65532 /out/data /data
# NO_COLOR: plain log lines for `kubectl logs` and log collectors.
ENV BLOG_HOST=0.0.0.0 \
    BLOG_DATA_DIR=/data \
    BLOG_LOG=info \
    NO_COLOR=1
USER 65532:65532
# `blog serve` stops gracefully on SIGTERM (what `docker stop` and the
# kubelet send); exec form, so the binary is PID 1 and receives it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/blog", "serve"]

FROM runtime AS posts
LABEL org.opencontainers.image.title="blog posts" \
      org.opencontainers.image.description="The blog's posts service (POST /posts/create, GET /posts)"
EXPOSE 4000
CMD ["posts"]

FROM runtime AS comments
LABEL org.opencontainers.image.title="blog comments" \
      org.opencontainers.image.description="The blog's comments service (/posts/:id/comments)"
EXPOSE 4001
CMD ["comments"]

FROM runtime AS query
LABEL org.opencontainers.image.title="blog query" \
      org.opencontainers.image.description="The blog's read model (GET /posts, GET /posts/live)"
EXPOSE 4002
CMD ["query"]

FROM runtime AS moderation
LABEL org.opencontainers.image.title="blog moderation" \
      org.opencontainers.image.description="The blog's comment moderation"
EXPOSE 4003
CMD ["moderation"]

FROM runtime AS event-bus
LABEL org.opencontainers.image.title="blog event-bus" \
      org.opencontainers.image.description="The blog's HTTP event bus (POST /events, GET /events)"
EXPOSE 4005
CMD ["event-bus"]

FROM runtime AS client
LABEL org.opencontainers.image.title="blog client" \
      org.opencontainers.image.description="The blog's React client, built, served by blog serve client"
COPY --from=client-build /client/dist /app/client
ENV BLOG_CLIENT_DIR=/app/client
EXPOSE 3000
CMD ["client"]
