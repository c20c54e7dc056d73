# shellcheck shell=bash
# The atoll image (deploy/Containerfile), built and smoke-tested with podman. Needs root: podman's
# storage is /var/lib/containers, and the smoke test reads who owns the files a container wrote.
# No registry is needed: the base is made here with debootstrap from Debian's packages and
# imported. Every container runs with runc and ulimits the machine allows (the default crun, and
# podman's default rlimits, fail where the machine withholds CAP_SYS_RESOURCE), without a network,
# under a timeout. Sourced by scripts/test.
#
#   image_tools               podman, runc, podman-compose, debootstrap and docker-registry
#                             from Debian when missing
#   image_base                localhost/atoll-base:bookworm: Debian's minbase with its security
#                             updates, made once and cached as a tarball in
#                             ${ATOLL_CACHE_DIR:-$HOME/.cache/atoll} (made again after 30 days)
#   image_build BINARY TAG    deploy/Containerfile around BINARY; prints the image's size
#   image_smoke TAG           runs the image: version, user, PATH, a volume, a read-only root

IMAGE_BASE_TAG=localhost/atoll-base:bookworm
IMAGE_BASE_SUITE=bookworm
# binutils: the build stage strips the binary's debug sections (binutils itself stays out of the image).
IMAGE_BASE_INCLUDE=ca-certificates,binutils
# Part of the cache key: bump it when the way the base is made changes.
IMAGE_BASE_RECIPE=1
IMAGE_BASE_MAX_AGE_DAYS=${IMAGE_BASE_MAX_AGE_DAYS:-30}
IMAGE_DEBIAN_MIRROR=${IMAGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE_DEBIAN_SECURITY_MIRROR=${IMAGE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
IMAGE_REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# podman itself: the storage driver said once (the kernel's overlay, on the default root), and no
# systemd to ask for cgroups or to log events to.
IMAGE_PODMAN=(podman --storage-driver overlay --cgroup-manager cgroupfs --events-backend file)
# Every container, in builds as in runs.
IMAGE_RUN_FLAGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

# image_podman SECONDS ARGS...: podman with its flags, killed after SECONDS.
image_podman() {
  local seconds=$1
  shift
  timeout -k 10 "$seconds" "${IMAGE_PODMAN[@]}" "$@"
}

_image_need_root() {
  [[ $(id -u) == 0 ]] && return 0
  echo "$1: needs root (podman's storage in /var/lib/containers; files owned by uid 65532)" >&2
  return 1
}

image_tools() {
  local packages=()
  command -v podman >/dev/null || packages+=(podman)
  command -v runc >/dev/null || packages+=(runc)
  # Containers on a network (compose projects, builds with RUN steps): netavark sets it up with
  # iptables, aardvark-dns names the services to each other.
  [[ -x /usr/lib/podman/netavark ]] || packages+=(netavark)
  [[ -x /usr/lib/podman/aardvark-dns ]] || packages+=(aardvark-dns)
  command -v iptables >/dev/null || packages+=(iptables)
  # docker-compose jobs on the process executor (node/src/jobs/containers.rs).
  command -v podman-compose >/dev/null || packages+=(podman-compose)
  command -v debootstrap >/dev/null || packages+=(debootstrap debian-archive-keyring)
  # A real image registry for the tests of registry logins (deployments, registries): each test
  # starts its own on 127.0.0.1; the package's service is never started.
  [[ -x /usr/bin/docker-registry ]] || packages+=(docker-registry)
  if ((${#packages[@]})); then
    _image_need_root image_tools || return 1
    # No service a package brings starts while it installs (unless this machine already says
    # so): a policy of this subshell's, removed however it ends.
    (
      policy=/usr/sbin/policy-rc.d
      if [[ ! -e $policy ]]; then
        trap 'rm -f "$policy"' EXIT INT TERM HUP
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
      fi
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" >&2; }
    ) || { echo "image_tools: apt-get could not install ${packages[*]}" >&2; return 1; }
  fi
  echo "image tools: podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR == 1 {print $3}'), podman-compose $(dpkg-query -W -f '${Version}' podman-compose 2>/dev/null || echo '?')," \
    "debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo '?')," \
    "docker-registry $(dpkg-query -W -f '${Version}' docker-registry 2>/dev/null || echo '?')${packages[*]:+ (installed ${packages[*]})}"
}

# _image_rootfs_remove DIR: a debootstrap target, with whatever a killed run left mounted in it.
_image_rootfs_remove() {
  local rootfs=$1 mount
  awk -v root="$rootfs/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r mount; do umount -l "$mount" || true; done
  rm -rf --one-file-system "$rootfs" "$rootfs.log"
}

# _image_debootstrap TARBALL: Debian's minbase with the security updates, as a gzipped tarball.
_image_debootstrap() {
  local tarball=$1 rootfs log suite=$IMAGE_BASE_SUITE started=$SECONDS debootstrap_s updates_s
  mkdir -p "$(dirname "$tarball")" || return 1
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/atoll-base.XXXXXX") || return 1
  log=$rootfs.log
  echo "image_base: debootstrap $suite (minbase, $IMAGE_BASE_INCLUDE) from $IMAGE_DEBIAN_MIRROR into $rootfs"
  if ! timeout -k 10 1800 debootstrap --variant=minbase --include="$IMAGE_BASE_INCLUDE" \
    "$suite" "$rootfs" "$IMAGE_DEBIAN_MIRROR" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    [[ -f $rootfs/debootstrap/debootstrap.log ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    echo "image_base: debootstrap failed (the end of its log above)" >&2
    _image_rootfs_remove "$rootfs"
    return 1
  fi
  debootstrap_s=$((SECONDS - started))
  printf '%s\n' "deb $IMAGE_DEBIAN_MIRROR $suite main" "deb $IMAGE_DEBIAN_MIRROR $suite-updates main" \
    "deb $IMAGE_DEBIAN_SECURITY_MIRROR $suite-security main" >"$rootfs/etc/apt/sources.list"
  if ! timeout -k 10 900 env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    chroot "$rootfs" sh -c 'apt-get update && apt-get -y upgrade && apt-get clean' >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "image_base: the security updates failed (the end of the log above)" >&2
    _image_rootfs_remove "$rootfs"
    return 1
  fi
  updates_s=$((SECONDS - started - debootstrap_s))
  # What debootstrap copied from this machine (the runtime mounts its own), and apt's caches.
  rm -rf "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
  # The runtime makes /dev, /proc and /sys; debootstrap's device nodes stay out.
  tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -C "$rootfs" -c . |
    gzip -1 >"$tarball.partial.$$"
  if [[ ${PIPESTATUS[0]} != 0 || ${PIPESTATUS[1]} != 0 ]]; then
    echo "image_base: could not write $tarball" >&2
    rm -f "$tarball.partial.$$"
    _image_rootfs_remove "$rootfs"
    return 1
  fi
  mv "$tarball.partial.$$" "$tarball"
  _image_rootfs_remove "$rootfs"
  echo "image_base: made $tarball ($(du -m "$tarball" | cut -f 1) MiB) in $((SECONDS - started))s" \
    "(debootstrap ${debootstrap_s}s, security updates ${updates_s}s)"
}

image_base() {
  local started=$SECONDS key tarball stamp current old how=cached
  _image_need_root image_base || return 1
  key=$(printf '%s\n' "$IMAGE_BASE_RECIPE" "$IMAGE_BASE_SUITE" "$IMAGE_BASE_INCLUDE" | sha256sum | cut -c 1-12)
  tarball=${ATOLL_CACHE_DIR:-$HOME/.cache/atoll}/atoll-base-$IMAGE_BASE_SUITE-$key.tar.gz
  if [[ -f $tarball && -n $(find "$tarball" -mtime +"$IMAGE_BASE_MAX_AGE_DAYS" 2>/dev/null) ]]; then
    echo "image_base: $tarball is older than $IMAGE_BASE_MAX_AGE_DAYS days: made again for newer packages"
    rm -f "$tarball"
  fi
  if [[ ! -f $tarball ]]; then
    _image_debootstrap "$tarball" || return 1
    how=made
  fi
  # The image carries which tarball it came from: an image from another recipe or an older
  # tarball is imported again.
  stamp=$key-$(stat -c %Y "$tarball")
  current=$(image_podman 60 image inspect --format '{{index .Labels "atoll.base"}}' "$IMAGE_BASE_TAG" 2>/dev/null || true)
  if [[ $current == "$stamp" ]]; then
    echo "image_base: $IMAGE_BASE_TAG present (from $tarball)"
    return 0
  fi
  old=$(image_podman 60 image inspect --format '{{.Id}}' "$IMAGE_BASE_TAG" 2>/dev/null || true)
  if ! image_podman 600 import --quiet --change "LABEL atoll.base=$stamp" "$tarball" "$IMAGE_BASE_TAG" >/dev/null; then
    echo "image_base: podman could not import $tarball as $IMAGE_BASE_TAG" >&2
    return 1
  fi
  # The one it replaced, unless something else still names or uses it.
  [[ -z $old ]] || image_podman 60 rmi "$old" >/dev/null 2>&1 || true
  echo "image_base: $IMAGE_BASE_TAG imported from $tarball ($how, $(du -m "$tarball" | cut -f 1) MiB) in $((SECONDS - started))s"
}

# image_build BINARY TAG: the context is a temporary directory holding only the binary.
image_build() {
  local binary=${1:?image_build BINARY TAG} tag=${2:?image_build BINARY TAG} started=$SECONDS
  local version context log old new bytes revision source labels=()
  _image_need_root image_build || return 1
  [[ -x $binary ]] || { echo "image_build: $binary is not an executable" >&2; return 1; }
  version=$("$binary" --version 2>/dev/null | awk '$1 == "atoll" { print $2 }')
  [[ -n $version ]] || { echo "image_build: $binary --version does not print \"atoll VERSION\"" >&2; return 1; }
  if revision=$(git -C "$IMAGE_REPO_DIR" rev-parse HEAD 2>/dev/null); then
    labels+=(--label "org.opencontainers.image.revision=$revision")
  fi
  # Without any credentials an address may hold.
  if source=$(git -C "$IMAGE_REPO_DIR" remote get-url origin 2>/dev/null); then
    labels+=(--label "org.opencontainers.image.source=$(sed -E 's#://[^/@]*@#://#' <<<"$source")")
  fi
  context=$(mktemp -d "${TMPDIR:-/tmp}/atoll-image.XXXXXX") || return 1
  log=$context.log
  cp "$binary" "$context/atoll" || { rm -rf "$context"; return 1; }
  old=$(image_podman 60 image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  if ! image_podman 900 build --pull=never --network none --layers=false "${IMAGE_RUN_FLAGS[@]}" \
    -f "$IMAGE_REPO_DIR/deploy/Containerfile" --build-arg ATOLL_BINARY=atoll \
    --build-arg "ATOLL_VERSION=$version" "${labels[@]}" -t "$tag" "$context" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "image_build: podman build of $tag failed (the end of its log above)" >&2
    rm -rf "$context" "$log"
    return 1
  fi
  rm -rf "$context" "$log"
  if ! new=$(image_podman 60 image inspect --format '{{.Id}}' "$tag") ||
    ! bytes=$(image_podman 60 image inspect --format '{{.Size}}' "$tag"); then
    echo "image_build: podman built $tag but cannot inspect it" >&2
    return 1
  fi
  # The image this tag named before, unless something else still names or uses it.
  [[ -z $old || $old == "$new" ]] || image_podman 60 rmi "$old" >/dev/null 2>&1 || true
  echo "image_build: $tag (atoll $version, ${new:0:12}): $((bytes / 1024 / 1024)) MiB, built in $((SECONDS - started))s"
}

_image_smoke_fail() {
  echo "image_smoke: $*" >&2
  return 1
}

# _image_run ARGS...: one container, removed after, without a network, under a minute.
_image_run() {
  image_podman 60 run --rm --network none "${IMAGE_RUN_FLAGS[@]}" "$@"
}

# _image_smoke_checks TAG DIR: every check, stopping at the first that fails; DIR is an empty
# host directory for the volume.
_image_smoke_checks() {
  local tag=$1 dir=$2 out version user mount stat file
  user=$(image_podman 60 image inspect --format '{{.Config.User}}' "$tag") ||
    _image_smoke_fail "no image $tag" || return 1
  [[ $user == 65532:65532 ]] || _image_smoke_fail "$tag runs as \"$user\", not 65532:65532" || return 1
  version=$(image_podman 60 image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$tag")
  [[ -n $version ]] || _image_smoke_fail "$tag has no org.opencontainers.image.version label" || return 1

  # The filesystem as shipped.
  mount=$(image_podman 60 image mount "$tag") || _image_smoke_fail "podman could not mount $tag" || return 1
  out=""
  [[ -x $mount/usr/local/bin/atoll ]] || out="no /usr/local/bin/atoll"
  [[ $(grep -c 'BEGIN CERTIFICATE' "$mount/etc/ssl/certs/ca-certificates.crt" 2>/dev/null) -ge 50 ]] ||
    out="no CA certificates in /etc/ssl/certs/ca-certificates.crt"
  grep -q '^atoll:x:65532:65532:' "$mount/etc/passwd" 2>/dev/null || out="no user atoll (65532) in /etc/passwd"
  stat=$(stat -c '%u:%g %a' "$mount/var/lib/atoll" 2>/dev/null)
  [[ $stat == "65532:65532 750" ]] || out="/var/lib/atoll is \"$stat\", not 65532:65532 750"
  stat=$(stat -c '%a' "$mount/tmp" 2>/dev/null)
  [[ $stat == 1777 ]] || out="/tmp has mode \"$stat\", not 1777"
  image_podman 60 image unmount "$tag" >/dev/null || true
  [[ -z $out ]] || _image_smoke_fail "$tag: $out" || return 1

  out=$(_image_run "$tag" --version) || _image_smoke_fail "atoll --version failed in $tag: $out" || return 1
  [[ $out == "atoll $version" ]] || _image_smoke_fail "atoll --version prints \"$out\", not \"atoll $version\"" || return 1

  # A job pod's helpers run `atoll pod ...` by name.
  out=$(_image_run --entrypoint atoll "$tag" pod --help 2>&1) && [[ $out == *inputs* ]] ||
    _image_smoke_fail "\`atoll pod --help\` (atoll found on PATH) failed in $tag: $out" || return 1

  # A volume on a read-only root: the files are written by the image's user.
  out=$(_image_run --read-only -v "$dir:/var/lib/atoll" "$tag" ca init --dir /var/lib/atoll/ca 2>&1) ||
    _image_smoke_fail "\`atoll ca init\` into a volume on a read-only root failed: $out" || return 1
  for file in ca.pem ca-key.pem; do
    [[ -s $dir/ca/$file ]] || _image_smoke_fail "no $file in the volume after \`atoll ca init\`" || return 1
    stat=$(stat -c '%u:%g' "$dir/ca/$file")
    [[ $stat == 65532:65532 ]] || _image_smoke_fail "$file in the volume is owned by $stat, not 65532:65532" || return 1
  done
  stat=$(stat -c '%a' "$dir/ca/ca-key.pem")
  [[ $stat == 600 ]] || _image_smoke_fail "ca-key.pem in the volume has mode $stat, not 600" || return 1

  # The root is read-only indeed: root itself cannot write to it.
  if out=$(_image_run --read-only --user 0:0 "$tag" ca init --dir /etc/atoll/ca 2>&1); then
    _image_smoke_fail "root wrote /etc/atoll/ca on a read-only root" || return 1
  fi
  [[ $out == *"Read-only file system"* ]] ||
    _image_smoke_fail "writing to a read-only root failed, but not as read-only: $out" || return 1

  # /tmp on a read-only root (a tmpfs); the image's own /tmp and its /var/lib/atoll volume.
  out=$(_image_run --read-only "$tag" ca init --dir /tmp/ca 2>&1) ||
    _image_smoke_fail "\`atoll ca init --dir /tmp/ca\` on a read-only root failed: $out" || return 1
  out=$(_image_run "$tag" ca init --dir /tmp/ca 2>&1) ||
    _image_smoke_fail "\`atoll ca init --dir /tmp/ca\` failed (the image's /tmp): $out" || return 1
  out=$(_image_run "$tag" ca init --dir /var/lib/atoll/ca 2>&1) ||
    _image_smoke_fail "\`atoll ca init\` into the image's own /var/lib/atoll volume failed: $out" || return 1
  echo "atoll $version"
}

image_smoke() {
  local tag=${1:?image_smoke TAG} started=$SECONDS dir result status
  _image_need_root image_smoke || return 1
  dir=$(mktemp -d "${TMPDIR:-/tmp}/atoll-volume.XXXXXX") || return 1
  # What an operator does for a volume (or Kubernetes with fsGroup): the image's user owns it.
  chown 65532:65532 "$dir"
  status=0
  result=$(_image_smoke_checks "$tag" "$dir") || status=1
  rm -rf "$dir"
  ((status == 0)) || { echo "image_smoke: $tag failed" >&2; return 1; }
  echo "image_smoke: $tag ok in $((SECONDS - started))s: $result as 65532:65532, on PATH," \
    "CA files written to a volume on a read-only root, /tmp writable, CA certificates present"
}
