# A local stand-in for the official Node.js image (node:<version>-<debian>-slim)
# on a machine that cannot pull it: the Debian root filesystem that
# scripts/images.sh made, the `node` user (uid 1000) of the official image,
# and Node.js and the npm it bundles at the official image's paths.
#
# The build context holds `node` (the binary, from the npm registry's
# node-linux-<arch> package), `npm.tgz` (the npm package) and `ca/` when the
# host trusts CA certificates of its own (a TLS-inspecting proxy between the
# machine and the registries): Node.js trusts the system's CA bundle here
# (NODE_EXTRA_CA_CERTS), and so those too.
ARG BASE
FROM ${BASE}
ARG NODE_VERSION
ARG DEBIAN_FRONTEND=noninteractive
ENV NODE_VERSION=${NODE_VERSION} \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 1000 node \
    && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
RUN --mount=type=bind,target=/context \
    if [ -d /context/ca ]; then \
        cp /context/ca/*.crt /usr/local/share/ca-certificates/ && update-ca-certificates; \
    fi \
    && install -m 0755 /context/node /usr/local/bin/node \
    && mkdir -p /usr/local/lib/node_modules/npm \
    && tar -xzf /context/npm.tgz --strip-components=1 --no-same-owner -C /usr/local/lib/node_modules/npm \
    && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && test "$(node --version)" = "v$NODE_VERSION" \
    && npm --version
CMD ["node"]
