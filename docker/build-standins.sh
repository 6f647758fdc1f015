#!/usr/bin/env bash
# Builds local stand-ins for the three upstream images docker-compose.yaml pulls
# (apache/airflow:<version>-python<py>, postgres:<n>, redis:<n>), for a machine that has a Docker
# engine and Debian/PyPI package mirrors but no container registry. Users with a registry need none
# of this: `docker compose up` pulls the official images.
#
#   sudo docker/build-standins.sh            # then: docker compose up -d
#
# How: `debootstrap` makes a Debian root filesystem from this machine's apt sources (with Python,
# PostgreSQL, Redis, curl, dumb-init), `docker import` turns it into a base image, and three small
# Dockerfiles under docker/standins/ build the stand-ins on it, tagged with the exact names the
# compose file and the Dockerfile use:
#   * Airflow: user airflow (uid 50000, gid 0), apache-airflow[celery,postgres] pip-installed into
#     its user site (~/.local, PIP_USER=true, as the official image does) under
#     requirements/constraints.txt, AIRFLOW_HOME=/opt/airflow, AIRFLOW_VERSION set, and an
#     /entrypoint with the official image's behaviour that the compose file relies on (bash/python/
#     airflow commands, DB wait, migration, root's PYTHONPATH, _PIP_ADDITIONAL_REQUIREMENTS, broker
#     wait) under dumb-init;
#   * PostgreSQL: Debian's server (15: the version bookworm has, not the tag's), initialised from
#     POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB on an empty data volume like the official one;
#   * Redis: Debian's redis-server (7.0), protected mode off, as the official image runs it.
# The machine's CA certificates, apt sources and /etc/pip.conf are copied into the base, so apt
# and pip inside the images reach the same mirrors this machine does (builds use the host network).
#
# Cache (CJA_STANDIN_CACHE, default /var/cache/cja-audiences-compose-test; empty = no cache): the
# debootstrap tarball, keyed by packages, apt sources and CA certificates, and `docker save` of the
# finished stand-ins, keyed by that plus the constraints and these build files. A warm cache makes
# this a `docker load`. Images the engine already has with the current key are kept as they are.
#
# Environment: DOCKER (client command, default docker; DOCKER_HOST is honoured), CJA_STANDIN_SUITE
# (default bookworm). Needs root (debootstrap, the cache directory).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/docker/standins"
CACHE=${CJA_STANDIN_CACHE-/var/cache/cja-audiences-compose-test}
SUITE=${CJA_STANDIN_SUITE:-bookworm}
read -r -a DOCKER_CMD <<<"${DOCKER:-docker}"
docker() { "${DOCKER_CMD[@]}" "$@"; }
log() { printf '[build-standins] %s\n' "$*" >&2; }

# The image names, from the files that use them (one source of truth).
AIRFLOW_IMAGE=$(sed -n 's/^FROM \(apache\/airflow:[^ ]*\).*/\1/p' "$ROOT/Dockerfile" | head -n1)
POSTGRES_IMAGE=$(sed -n 's/^ *image: *\(postgres:[^ ]*\) *$/\1/p' "$ROOT/docker-compose.yaml" | head -n1)
REDIS_IMAGE=$(sed -n 's/^ *image: *\(redis:[^ ]*\) *$/\1/p' "$ROOT/docker-compose.yaml" | head -n1)
[[ $AIRFLOW_IMAGE =~ ^apache/airflow:([0-9.]+)-python([0-9.]+)$ ]] || { log "no apache/airflow FROM line in Dockerfile"; exit 1; }
AIRFLOW_VERSION=${BASH_REMATCH[1]}
PYTHON_VERSION=${BASH_REMATCH[2]}
[[ -n $POSTGRES_IMAGE && -n $REDIS_IMAGE ]] || { log "postgres/redis images not found in docker-compose.yaml"; exit 1; }
grep -qx "apache-airflow==$AIRFLOW_VERSION" "$ROOT/requirements/constraints.txt" \
    || { log "requirements/constraints.txt does not pin apache-airflow==$AIRFLOW_VERSION (the Dockerfile's)"; exit 1; }

# What this machine's apt and pip use, copied into the images.
APT_SOURCES=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
mapfile -t APT_SOURCES < <(for f in "${APT_SOURCES[@]}"; do [[ -s $f ]] && echo "$f"; done)
CA_FILES=()
[[ -d /usr/local/share/ca-certificates ]] && mapfile -t CA_FILES < <(find /usr/local/share/ca-certificates -name '*.crt' | sort)
PIP_CONF=()
[[ -s /etc/pip.conf ]] && PIP_CONF=(/etc/pip.conf)
MIRROR=$(cat "${APT_SOURCES[@]}" | sed -n -e 's/^URIs: *\([^ ]*\).*/\1/p' -e 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' \
         | grep -v -e security -e '^$' | head -n1)
[[ -n $MIRROR ]] || { log "no Debian mirror in this machine's apt sources"; exit 1; }
PACKAGES="ca-certificates,curl,dumb-init,netcat-openbsd,procps,python$PYTHON_VERSION,python3-pip,python-is-python3,libpq5,postgresql,redis-server"

sha() { sha256sum | cut -c1-16; }
ROOTFS_KEY=$( { echo "$SUITE $MIRROR $PACKAGES"; cat "${APT_SOURCES[@]}" "${CA_FILES[@]}" "${PIP_CONF[@]}"; } | sha)
IMAGES_KEY=$( { echo "$ROOTFS_KEY $AIRFLOW_IMAGE $POSTGRES_IMAGE $REDIS_IMAGE"; cat "$0" "$ROOT/requirements/constraints.txt";
                find "$HERE" -type f | sort | xargs cat; } | sha)
BASE_IMAGE="cja-audiences-standin-base:$ROOTFS_KEY"
LABEL=io.cja-audiences.standin-key

current() {  # every stand-in present with this key
    local image
    for image in "$AIRFLOW_IMAGE" "$POSTGRES_IMAGE" "$REDIS_IMAGE"; do
        [[ $(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$image" 2>/dev/null) == "$IMAGES_KEY" ]] || return 1
    done
}

if current; then
    log "stand-ins are up to date ($IMAGES_KEY)"
    exit 0
fi

if [[ -n $CACHE ]]; then
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9  # one build per cache at a time
    if [[ -s $CACHE/standins-$IMAGES_KEY.tar ]]; then
        log "loading the stand-ins from $CACHE/standins-$IMAGES_KEY.tar"
        docker load -q -i "$CACHE/standins-$IMAGES_KEY.tar" >&2
        current && exit 0
        log "the cached stand-ins do not carry key $IMAGES_KEY; rebuilding"
    fi
fi

WORK=$(mktemp -d /var/tmp/cja-standins.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

rootfs_tar="${CACHE:+$CACHE/rootfs-$SUITE-$ROOTFS_KEY.tar}"
rootfs_tar=${rootfs_tar:-$WORK/rootfs.tar}
if [[ ! -s $rootfs_tar ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    log "debootstrap $SUITE from $MIRROR (packages: $PACKAGES)"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 40 "$WORK/debootstrap.log" >&2; exit 1; }
    # apt and pip inside reach what this machine reaches: its sources, its CA certificates, its pip.conf.
    rm -f "$rootfs/etc/apt/sources.list"
    for f in "${APT_SOURCES[@]}"; do mkdir -p "$rootfs$(dirname "$f")"; cp "$f" "$rootfs$f"; done
    for f in "${CA_FILES[@]}"; do cp "$f" "$rootfs/usr/local/share/ca-certificates/"; done
    for f in "${PIP_CONF[@]}"; do cp "$f" "$rootfs$f"; done
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1  # its exit status still counts (set -e)
    # The packages' default PostgreSQL cluster is not used (the stand-in initialises its own).
    chroot "$rootfs" pg_dropcluster --stop "$(ls "$rootfs/etc/postgresql")" main 2>/dev/null || true
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$rootfs"
fi
log "importing $rootfs_tar as $BASE_IMAGE"
docker import -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$rootfs_tar" "$BASE_IMAGE" >/dev/null

build() {  # build <image> <dir> [build args...]
    local image=$1 dir=$2
    shift 2
    log "building $image"
    docker build -q --network host --build-arg "BASE=$BASE_IMAGE" --label "$LABEL=$IMAGES_KEY" "$@" \
        -t "$image" "$dir" >&2
}
cp "$ROOT/requirements/constraints.txt" "$WORK/constraints.txt"
cp -r "$HERE/airflow" "$WORK/airflow"
cp "$WORK/constraints.txt" "$WORK/airflow/constraints.txt"
build "$AIRFLOW_IMAGE" "$WORK/airflow" --build-arg "AIRFLOW_VERSION=$AIRFLOW_VERSION" --build-arg "PYTHON_VERSION=$PYTHON_VERSION"
build "$POSTGRES_IMAGE" "$HERE/postgres"
build "$REDIS_IMAGE" "$HERE/redis"
current || { log "the stand-ins were built but do not carry key $IMAGES_KEY"; exit 1; }

if [[ -n $CACHE ]]; then
    log "saving the stand-ins to $CACHE/standins-$IMAGES_KEY.tar"
    docker save -o "$CACHE/standins-$IMAGES_KEY.tar.tmp" "$AIRFLOW_IMAGE" "$POSTGRES_IMAGE" "$REDIS_IMAGE"
    mv "$CACHE/standins-$IMAGES_KEY.tar.tmp" "$CACHE/standins-$IMAGES_KEY.tar"
    # Older keys are stale (constraints or build files changed): keep the cache to one generation.
    find "$CACHE" -maxdepth 1 -name 'standins-*.tar' ! -name "standins-$IMAGES_KEY.tar" -delete
    find "$CACHE" -maxdepth 1 -name "rootfs-*.tar" ! -name "$(basename "$rootfs_tar")" -delete
fi
docker rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true  # the stand-ins keep its layer
log "done: $AIRFLOW_IMAGE $POSTGRES_IMAGE $REDIS_IMAGE ($IMAGES_KEY)"
