# A local stand-in for the official Rust image (rust:<version>-slim-<debian>)
# on a machine that cannot pull it: the Debian root filesystem that
# scripts/images.sh made, what the official slim image adds to Debian (gcc,
# the C library's headers, CA certificates), and one Rust toolchain at the
# official image's paths (CARGO_HOME /usr/local/cargo, on PATH).
#
# The build context holds either `toolchain/`, a toolchain installed on the
# host, copied as it is, or `rustup-init`, which installs the toolchain here;
# and `ca/`, when the host trusts CA certificates of its own (a TLS-inspecting
# proxy between the machine and the registries): the image trusts them too.
ARG BASE
FROM ${BASE}
ARG RUST_VERSION
ARG DEBIAN_FRONTEND=noninteractive
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# `set -- $(rustc --version)`: its words, split on purpose.
# hadolint ignore=SC2046
RUN --mount=type=bind,target=/context \
    if [ -d /context/ca ]; then \
        cp /context/ca/*.crt /usr/local/share/ca-certificates/ && update-ca-certificates; \
    fi \
    && if [ -d /context/toolchain ]; then \
        mkdir -p "$RUSTUP_HOME/toolchains" "$CARGO_HOME/bin" \
        && cp -a /context/toolchain "$RUSTUP_HOME/toolchains/$RUST_VERSION" \
        && for tool in cargo rustc rustdoc; do \
            ln -s "$RUSTUP_HOME/toolchains/$RUST_VERSION/bin/$tool" "$CARGO_HOME/bin/$tool"; \
        done; \
    else \
        /context/rustup-init -y --no-modify-path --profile minimal --default-toolchain "$RUST_VERSION"; \
    fi \
    && chmod -R a+w "$RUSTUP_HOME" "$CARGO_HOME" \
    && set -- $(rustc --version) && [ "$2" = "$RUST_VERSION" ] \
    && cargo --version
