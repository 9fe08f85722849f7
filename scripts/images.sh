#!/usr/bin/env bash
# Builds every image of the Dockerfile for real, then runs the course's flow
# against them as containers: each with a read-only root filesystem, as its
# image's own non-root user, with its manifest's environment and volumes
# (infra/k8s/base), and infra/smoke.sh through a gateway container.
#
#   bash scripts/images.sh           build, then run
#   bash scripts/images.sh build     build only (and report the image sizes)
#   bash scripts/images.sh run       run the images built before
#
# Too slow for CI: the first build compiles every dependency. See
# docs/deploy.md, "Building the images". Needs a Docker engine with BuildKit
# and curl; to make stand-ins (below) also root, debootstrap, rustup and npm.
#
# Base images. A base image of the Dockerfile that is neither in the engine
# nor pullable is replaced by a LOCAL STAND-IN tagged with the same name,
# made from package registries only (scripts/images/*.Dockerfile): a Debian
# root filesystem from debootstrap; rust = that + the pinned toolchain (the
# host's rustup toolchain copied in, or installed by rustup-init); node =
# that + node-linux-<arch> and npm from the npm registry; the distroless
# runtime = the Debian packages it holds, no shell. Stand-ins carry the label
# blog.images.standin=true; `docker rmi` one to have it made again.
#
# Environment:
#   DOCKER            the docker CLI (default docker). BuildKit is needed: the
#                     buildx plugin, or a CLI older than 23.0
#   CARGO_BUILD_JOBS  compile jobs in the Rust stages (default: one per core)
#   IMAGES_STANDINS   auto (default) or never: fail when a base image is missing
#   IMAGES_TAG        the images are blog/<target>:<tag> (default dev)
#   IMAGES_WORK       scratch folder (default ${TMPDIR:-/tmp}/blog-images)
#   DEBIAN_MIRROR     debootstrap's mirror (default: debootstrap's own)
#   RUST_STANDIN      copy (default when rustup has the pinned version) or install
#   IMAGES_EXTRA_CA   a folder of *.crt CA certificates that the rust and node
#                     stand-ins trust besides Debian's, for a TLS-inspecting proxy
#                     (default: the host's own, /usr/local/share/ca-certificates)
#
# Builds and containers use the host's network (--network host): the
# containers listen on 127.0.0.1 only, on the course's ports, or on free ones
# when those are taken. Exits non-zero on the first failure; always removes
# its containers and their volumes.
set -euo pipefail

cd "$(dirname "$0")/.."
mode=${1:-all}
case $mode in all | build | run) ;; *)
  echo "usage: $0 [build|run]" >&2
  exit 2
  ;;
esac

docker=${DOCKER:-docker}
tag=${IMAGES_TAG:-dev}
work=${IMAGES_WORK:-${TMPDIR:-/tmp}/blog-images}
standins=${IMAGES_STANDINS:-auto}
targets=(posts comments query moderation event-bus client client-dev)
standin_label=blog.images.standin

say() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() {
  printf 'images: FAILED: %s\n' "$*" >&2
  exit 1
}
image_of() { printf 'blog/%s:%s' "$1" "$tag"; }
have_image() { "$docker" image inspect "$1" >/dev/null 2>&1; }
is_standin() { [ "$("$docker" image inspect -f "{{ index .Config.Labels \"$standin_label\" }}" "$1" 2>/dev/null)" = true ]; }
size_of() { "$docker" image ls --format '{{.Size}}' "$1" | head -n 1; }

"$docker" info >/dev/null 2>&1 || die "no Docker engine answers to '$docker info'"
mkdir -p "$work/logs"

# ------------------------------------------------------------------ build
# build ARGS...: a BuildKit build (RUN --mount needs it).
if "$docker" buildx version >/dev/null 2>&1; then
  build() { "$docker" buildx build --load --progress=plain "$@"; }
else
  client=$("$docker" version --format '{{.Client.Version}}' 2>/dev/null || echo 0)
  [ "${client%%.*}" -lt 23 ] 2>/dev/null ||
    die "docker $client has no buildx plugin, and without it cannot build with BuildKit: install buildx, or set DOCKER to a CLI older than 23.0"
  build() { DOCKER_BUILDKIT=1 "$docker" build --progress=plain "$@"; }
fi

# logged NAME COMMAND...: runs it into $work/logs/NAME.log; the log's end on failure.
logged() {
  local name=$1 started=$SECONDS
  shift
  if ! "$@" >"$work/logs/$name.log" 2>&1; then
    tail -n 60 "$work/logs/$name.log" >&2
    die "$name (log: $work/logs/$name.log)"
  fi
  note "$name: $((SECONDS - started)) s"
}

arg_of() { sed -n "s/^ARG $1=//p" Dockerfile | head -n 1; }
rust_image=$(arg_of RUST_IMAGE)
node_image=$(arg_of NODE_IMAGE)
runtime_image=$(arg_of RUNTIME_IMAGE)
suite=${rust_image##*-}                          # rust:1.95.0-slim-bookworm: bookworm
case $(uname -m) in x86_64) node_arch=x64 ;; aarch64) node_arch=arm64 ;; *) node_arch=$(uname -m) ;; esac

# The Debian root filesystem every stand-in starts from.
debian_standin() {
  local image=blog-standin/debian:$suite rootfs=$work/rootfs
  have_image "$image" && return
  command -v debootstrap >/dev/null || die "debootstrap is needed to make stand-ins (apt-get install debootstrap)"
  rm -rf "$rootfs"
  logged "debootstrap-$suite" debootstrap --variant=minbase "$suite" "$rootfs" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"}
  # As Debian's own images: apt keeps no package files or caches in a layer,
  # and no documentation (the slim images' trimming, roughly).
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
  tar -C "$rootfs" -c . | "$docker" import --change 'CMD ["bash"]' - "$image" >/dev/null
  rm -rf "$rootfs"
}

# standin NAME IMAGE CONTEXT [BUILD ARGS...]: scripts/images/NAME.Dockerfile as IMAGE.
standin() {
  local name=$1 image=$2 context=$3
  shift 3
  logged "standin-$name" build --network host -f "scripts/images/$name.Dockerfile" \
    --build-arg "BASE=blog-standin/debian:$suite" "$@" \
    --label "$standin_label=true" \
    --label "org.opencontainers.image.description=local stand-in for $image, made by scripts/images.sh" \
    -t "$image" "$context"
}

# extra_ca CONTEXT: the host's own CA certificates into CONTEXT/ca, if any.
extra_ca() {
  local dir=${IMAGES_EXTRA_CA:-/usr/local/share/ca-certificates} found
  found=$(find "$dir" -maxdepth 1 -name '*.crt' 2>/dev/null | sort)
  [ -n "$found" ] || return 0
  mkdir -p "$1/ca"
  while read -r certificate; do cp "$certificate" "$1/ca/"; done <<<"$found"
  note "trusting the CA certificates in $dir too: $(cd "$1/ca" && echo *.crt)"
}

# The sysroot of an installed rustup toolchain whose rustc is VERSION.
installed_toolchain() {
  command -v rustup >/dev/null || return 0
  local name sysroot
  for name in $(rustup toolchain list 2>/dev/null | awk '{print $1}'); do
    sysroot=$(rustup run "$name" rustc --print sysroot 2>/dev/null) || continue
    if "$sysroot/bin/rustc" --version 2>/dev/null | grep -q "^rustc $1 "; then
      printf '%s\n' "$sysroot"
      return
    fi
  done
}

rust_standin() {
  local version context=$work/context/rust sysroot
  version=$(sed -E 's/^rust:([0-9]+\.[0-9]+\.[0-9]+).*/\1/' <<<"$rust_image")
  rm -rf "$context" && mkdir -p "$context"
  sysroot=$(installed_toolchain "$version")
  if [ -n "$sysroot" ] && [ "${RUST_STANDIN:-copy}" = copy ]; then
    note "rust $version: the host's toolchain ($("$sysroot/bin/rustc" --version)), without its documentation"
    mkdir "$context/toolchain"
    tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$context/toolchain" -xf -
  else
    command -v rustup >/dev/null || die "rustup is needed to make the rust stand-in"
    note "rust $version: installed by rustup-init in the image"
    cp "$(readlink -f "$(command -v rustup)")" "$context/rustup-init"
  fi
  extra_ca "$context"
  standin rust "$rust_image" "$context" --build-arg "RUST_VERSION=$version"
  rm -rf "$context"
}

node_standin() {
  local version context=$work/context/node package npm_version
  version=$(sed -E 's/^node:([0-9]+\.[0-9]+\.[0-9]+).*/\1/' <<<"$node_image")
  command -v npm >/dev/null || die "npm is needed to make the node stand-in"
  rm -rf "$context" && mkdir -p "$context"
  package=$(npm pack --silent --pack-destination "$context" "node-linux-$node_arch@$version" | tail -n 1)
  tar -xzf "$context/$package" -C "$context" package/bin/node package/CHANGELOG.md
  mv "$context/package/bin/node" "$context/node"
  # The npm that this Node.js release bundles: the newest "upgrade npm to" in its changelog.
  npm_version=$(grep -m 1 -o 'upgrade npm to [0-9][0-9.]*[0-9]' "$context/package/CHANGELOG.md" | awk '{print $4}')
  [ -n "$npm_version" ] || die "no npm version in the changelog of node $version"
  note "node $version with npm $npm_version, from the npm registry"
  package=$(npm pack --silent --pack-destination "$context" "npm@$npm_version" | tail -n 1)
  mv "$context/$package" "$context/npm.tgz"
  rm -rf "$context/package" "$context"/node-linux-*.tgz
  extra_ca "$context"
  standin node "$node_image" "$context" --build-arg "NODE_VERSION=$version"
  rm -rf "$context"
}

runtime_standin() {
  local context=$work/context/runtime
  rm -rf "$context" && mkdir -p "$context"
  cp scripts/images/runtime-files.sh "$context/"
  standin runtime "$runtime_image" "$context"
  rm -rf "$context"
}

# base IMAGE MAKER: IMAGE from the engine, else pulled, else MAKER's stand-in.
base() {
  local image=$1 maker=$2
  if have_image "$image"; then
    if is_standin "$image"; then note "$image: the local stand-in made before"; else note "$image: in the engine"; fi
  elif timeout 120 "$docker" pull -q "$image" >/dev/null 2>&1; then
    note "$image: pulled"
  elif [ "$standins" = never ]; then
    die "$image: not in the engine and cannot be pulled (IMAGES_STANDINS=never)"
  else
    note "$image: cannot be pulled, making a local stand-in"
    debian_standin
    "$maker"
    note "$image: stand-in made ($(size_of "$image"))"
  fi
}

build_images() {
  local started=$SECONDS dockerfile=Dockerfile frontend jobs=()
  say "Base images"
  base "$rust_image" rust_standin
  base "$node_image" node_standin
  base "$runtime_image" runtime_standin

  # `# syntax=IMAGE` makes BuildKit fetch that Dockerfile frontend; where it
  # cannot be had, the engine's built-in frontend reads the same file.
  frontend=$(sed -n '1s/^# *syntax *= *//p' Dockerfile)
  if [ -n "$frontend" ] && ! have_image "$frontend" && ! timeout 120 "$docker" pull -q "$frontend" >/dev/null 2>&1; then
    dockerfile=$work/Dockerfile
    sed 1d Dockerfile >"$dockerfile"
    note "$frontend cannot be pulled: the engine's built-in Dockerfile frontend builds the Dockerfile (its '# syntax' line left out)"
  fi

  [ -z "${CARGO_BUILD_JOBS:-}" ] || jobs=(--build-arg "CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS")
  say "Images (logs in $work/logs)"
  local target
  for target in "${targets[@]}"; do
    logged "$target" build --network host -f "$dockerfile" "${jobs[@]}" --target "$target" -t "$(image_of "$target")" .
  done
  note "all built in $((SECONDS - started)) s"

  say "Sizes"
  for target in "${targets[@]}"; do
    printf '   %-24s %s\n' "$(image_of "$target")" "$(size_of "$(image_of "$target")")"
  done
  local binary
  binary=$("$docker" history --no-trunc --format '{{.Size}}|{{.CreatedBy}}' "$(image_of posts)" |
    awk -F'|' '$2 ~ /^COPY .*\/usr\/local\/bin\/blog/ {print $1; exit}')
  note "the blog binary's layer: $binary; the runtime base ($runtime_image): $(size_of "$runtime_image")"
}

# -------------------------------------------------------------------- run
containers=()

cleanup() {
  local status=$? name
  if [ ${#containers[@]} -gt 0 ]; then
    if [ $status -ne 0 ]; then
      for name in "${containers[@]}"; do
        printf '\n-- logs of %s\n' "$name" >&2
        "$docker" logs --tail 30 "$name" >&2 2>&1 || true
      done
    fi
    for name in "${containers[@]}"; do
      "$docker" rm -f "$name" >/dev/null 2>&1 || true
      "$docker" volume rm "$name-data" >/dev/null 2>&1 || true
    done
  fi
  exit $status
}

# A port nothing listens on at 127.0.0.1: PORT itself, or PORT+10000, ...
free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    port=$((port + 10000))
    [ "$port" -lt 65536 ] || die "no free port for $1"
  done
  printf '%s\n' "$port"
}

declare -A port
url() { printf 'http://127.0.0.1:%s' "${port[$1]}"; }

# start NAME DATA TMP [docker run options...] IMAGE [COMMAND]: a container as
# its image's user, read-only, with a volume at /data when DATA is "data"
# (the manifests' PersistentVolumeClaim), a tmpfs at /tmp when TMP is "tmp"
# (their emptyDir), and the restricted profile's settings.
start() {
  local name=blog-images-$1 data=$2 tmp=$3 options=()
  shift 3
  [ "$data" = data ] && options+=(--mount "type=volume,source=$name-data,target=/data")
  [ "$tmp" = tmp ] && options+=(--tmpfs /tmp)
  "$docker" rm -f "$name" >/dev/null 2>&1 || true
  "$docker" volume rm "$name-data" >/dev/null 2>&1 || true
  containers+=("$name")
  "$docker" run --detach --name "$name" --network host --read-only \
    --cap-drop ALL --security-opt no-new-privileges "${options[@]}" \
    --env BLOG_HOST=127.0.0.1 --env "BLOG_PORT=${port[${name#blog-images-}]}" "$@" >/dev/null
}

# ready SERVICE: waits for its /readyz, then checks that it runs read-only, as non-root.
ready() {
  local name=blog-images-$1 deadline=$((SECONDS + 60)) user read_only pid uid
  until curl -fsS --max-time 2 "$(url "$1")/readyz" >/dev/null 2>&1; do
    [ "$("$docker" inspect -f '{{.State.Running}}' "$name")" = true ] || die "$1 exited"
    [ $SECONDS -lt $deadline ] || die "$1: /readyz never answered 200 on $(url "$1")"
    sleep 1
  done
  IFS='|' read -r user read_only pid < <("$docker" inspect -f '{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.State.Pid}}' "$name")
  uid=$(awk '/^Uid:/ {print $3}' "/proc/$pid/status" 2>/dev/null || echo "?")
  case ${user%%:*} in "" | 0 | root) die "$1 runs as root (image user '$user')" ;; esac
  [ "$read_only" = true ] || die "$1: the root filesystem is writable"
  [ "$uid" = "?" ] || [ "$uid" != 0 ] || die "$1: the process runs as uid 0"
  note "$1: ready on $(url "$1"), user $user (process uid $uid), read-only root filesystem"
}

run_images() {
  local target service code
  for target in "${targets[@]}"; do
    have_image "$(image_of "$target")" || die "$(image_of "$target") is not built: run '$0 build' first"
  done
  for service in posts:4000 comments:4001 query:4002 moderation:4003 event-bus:4005 client:3000 gateway:8080; do
    port[${service%%:*}]=$(free_port "${service#*:}")
  done
  trap cleanup EXIT
  say "Containers"
  # The base manifests' environment, with Service names as loopback URLs.
  start event-bus data tmp --env BLOG_DATA_DIR=/data \
    --env "BLOG_SUBSCRIBERS=$(url posts)/events,$(url comments)/events,$(url query)/events,$(url moderation)/events" \
    "$(image_of event-bus)"
  ready event-bus
  for service in posts comments query moderation; do
    local extra=()
    [ "$service" = moderation ] && extra=(--env BLOG_BLOCKED_WORDS=orange)
    start "$service" data tmp --env BLOG_DATA_DIR=/data --env "BLOG_BUS=$(url event-bus)" "${extra[@]}" \
      "$(image_of "$service")"
  done
  for service in posts comments query moderation; do ready "$service"; done
  start client - tmp "$(image_of client)"
  ready client
  # In place of the Ingress: `blog serve gateway` (the same rules, `blog
  # routes`) from the client image, in front of the services and the client.
  start gateway - - --env "BLOG_POSTS_URL=$(url posts)" --env "BLOG_COMMENTS_URL=$(url comments)" \
    --env "BLOG_QUERY_URL=$(url query)" --env "BLOG_CLIENT_URL=$(url client)" \
    "$(image_of client)" gateway
  ready gateway

  say "The course's flow through the gateway"
  bash infra/smoke.sh "$(url gateway)"

  say "Stopping (SIGTERM)"
  for service in gateway client moderation query comments posts event-bus; do
    "$docker" stop --time 30 "blog-images-$service" >/dev/null
    code=$("$docker" inspect -f '{{.State.ExitCode}}' "blog-images-$service")
    [ "$code" = 0 ] || die "$service exited with $code on SIGTERM"
    note "$service: exited 0"
  done
}

case $mode in
  all)
    build_images
    run_images
    ;;
  build) build_images ;;
  run) run_images ;;
esac
say "images: OK"
