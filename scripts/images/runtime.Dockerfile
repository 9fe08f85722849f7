# A local stand-in for the distroless runtime (gcr.io/distroless/cc-debian12:nonroot)
# on a machine that cannot pull it: no shell, no package manager, only what
# a glibc program needs (the C and C++ runtimes, OpenSSL, CA certificates,
# time zones), users root, nonroot (65532) and nobody, and 65532 as the user.
ARG BASE
FROM ${BASE} AS files
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libgcc-s1 libgomp1 libssl3 libstdc++6 netbase tzdata \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,target=/context \
    sh /context/runtime-files.sh /out \
        base-files libc6 libgcc-s1 libgomp1 libssl3 libstdc++6 ca-certificates netbase tzdata

FROM scratch
COPY --from=files /out /
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532
WORKDIR /home/nonroot
