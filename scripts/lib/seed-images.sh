# Sourced by scripts/node-images.sh: images of the seed's four apps (examples/seed/apps), named as
# examples/seed/artifacts/apps names them (wardenlym/<app>:v1, springboot-app also :v2), so those
# manifests apply unchanged: their imagePullPolicy IfNotPresent finds the image in containerd and
# never pulls. Each image is the agent's bookworm base (debootstrap) plus one layer of what
# scripts/seed-apps.sh built and what it runs on:
#   golang-app-*            the Go binary (cgo's resolver links libc, which the base has)
#   python-app-anticaptcha  the app, its venv (Pillow), and the interpreter the venv was made from
#                           at its own path (the venv's pyvenv.cfg and symlinks name it), without
#                           its tests, IDLE, tkinter and site-packages, plus the libraries its
#                           extension modules link
#   springboot-app          the fat jar and a Java runtime made by jlink from the build's JDK
#                           (only the modules a Spring Boot web app loads: ~25 % of the JDK)
# Cached in $CACHE/seed/ by the app's build hash and this file's hash.
# Needs CACHE, REPO, log, die, copy_with_libs and build_base of node-images.sh.

SEED_IMAGE_PREFIX=docker.io/wardenlym
# What Spring Boot's web stack, logging, JMX and the JVM's own tools use.
JRE_MODULES=java.base,java.compiler,java.desktop,java.instrument,java.logging,java.management,java.naming,java.net.http,java.prefs,java.rmi,java.scripting,java.security.jgss,java.sql,java.xml,jdk.crypto.ec,jdk.jfr,jdk.management,jdk.naming.dns,jdk.unsupported,jdk.zipfs

# seed_app_paths: APP=<path of bin/APP> lines from scripts/seed-apps.sh (builds what is missing).
seed_app_paths() {
  local out
  out=$(bash "$REPO/scripts/seed-apps.sh") || die "scripts/seed-apps.sh failed"
  awk '$1 == "seed-app" {print $2 "=" $3}' <<<"$out"
}

# The base layer's files (./usr/lib/...), listed once: libraries it has are not copied again.
base_files() {
  [ -s "$CACHE/bookworm.files" ] && return 0
  local blob
  blob=$(find "$CACHE/bookworm.layout/blobs" -type f -size +1M | head -n1)
  tar -tzf "$blob" | sed 's#^\./##; s#^#/#' >"$CACHE/bookworm.files.tmp"
  mv "$CACHE/bookworm.files.tmp" "$CACHE/bookworm.files"
}

# libs_of ROOT FILE...: every library the files link (ldd) that the base lacks, under ROOT at its
# path without symlinked directories (/lib is a link to usr/lib in the base: a real /lib in the
# layer would hide the base's).
libs_of() {
  local root=$1 f lib dest
  shift
  base_files
  for f in "$@"; do
    for lib in $(ldd "$f" 2>/dev/null | awk '/=> \//{print $3}'); do
      dest=$(readlink -f "$(dirname "$lib")")/$(basename "$lib")
      grep -qxF "$dest" "$CACHE/bookworm.files" && continue
      [ -e "$root$dest" ] && continue
      mkdir -p "$root$(dirname "$dest")"
      cp -L "$lib" "$root$dest"
    done
  done
}

stage_go() {
  local stage=$1 bin=$2 app=$3
  mkdir -p "$stage/app"
  cp -L "$bin" "$stage/app/$app"
  libs_of "$stage" "$stage/app/$app"
  ENTRY=("/app/$app")
}

stage_python() {
  local stage=$1 dir=$2 home prefix py
  home=$(awk -F' = ' '$1 == "home" {print $2}' "$dir/venv/pyvenv.cfg")
  prefix=$(dirname "$home")
  py=$(readlink -f "$home/python3")
  mkdir -p "$stage/app" "$stage$prefix/bin" "$stage$prefix/lib"
  cp -a "$dir/venv" "$stage/app/venv"
  cp "$dir/app.py" "$stage/app/app.py"
  cp -L "$py" "$stage$prefix/bin/$(basename "$py")"
  ln -s "$(basename "$py")" "$stage$prefix/bin/python3"
  cp -a "$prefix"/lib/libpython3*.so* "$stage$prefix/lib/" 2>/dev/null || true
  local ver
  ver=$(basename "$py")
  tar -C "$prefix/lib" --exclude="$ver/test" --exclude="$ver/site-packages" --exclude="$ver/idlelib" \
    --exclude="$ver/tkinter" --exclude="$ver/ensurepip" --exclude="$ver/lib2to3" \
    --exclude="$ver/turtledemo" --exclude="$ver/config-*" --exclude=__pycache__ -cf - "$ver" |
    tar -C "$stage$prefix/lib" -xf -
  # The venv's python links to $home/python3, which is there now.
  libs_of "$stage" "$py" $(find "$prefix/lib/$ver/lib-dynload" "$dir/venv" -name '*.so*' -type f)
  ENTRY=(/app/venv/bin/python -u /app/app.py)
}

stage_java() {
  local stage=$1 dir=$2 java jdk
  java=$(sed -n 's/^exec "\([^"]*\)".*/\1/p' "$dir/bin/springboot-app")
  jdk=$(dirname "$(dirname "$(readlink -f "$java")")")
  [ -x "$jdk/bin/jlink" ] || die "no jlink in $jdk (the JDK scripts/seed-apps.sh built with)"
  mkdir -p "$stage/app" "$stage/opt"
  cp "$dir/springboot-app.jar" "$stage/app/springboot-app.jar"
  "$jdk/bin/jlink" --add-modules "$JRE_MODULES" --strip-debug --no-header-files --no-man-pages \
    --output "$stage/opt/jre" >/dev/null
  libs_of "$stage" $(find "$stage/opt/jre" -name '*.so' -type f)
  # The launcher's default options, as bin/springboot-app runs it.
  ENTRY=(/bin/sh -c 'exec /opt/jre/bin/java ${JAVA_OPTS:--XX:TieredStopAtLevel=1} -jar /app/springboot-app.jar')
}

# build_seed_image APP BIN: $CACHE/seed/APP-<hash>.tar, the image tagged v1.
build_seed_image() {
  local app=$1 bin=$2 dir key tar
  dir=$(dirname "$(dirname "$bin")")
  key=$(basename "$dir")-$(sha256sum "$REPO/scripts/lib/seed-images.sh" | cut -c1-12)
  tar=$CACHE/seed/$app-$key.tar
  SEED_TAR=$tar
  [ -s "$tar" ] && return 0
  mkdir -p "$CACHE/seed"
  rm -f "$CACHE/seed/$app"-*.tar
  local stage=$CACHE/seed/$app.stage layout=$CACHE/seed/$app.layout
  rm -rf "$stage" "$layout" && mkdir -p "$stage"
  case $app in
  golang-app-*) stage_go "$stage" "$bin" "$app" ;;
  python-app-*) stage_python "$stage" "$dir" ;;
  springboot-app) stage_java "$stage" "$dir" ;;
  *) die "no image recipe for $app" ;;
  esac
  build_base
  cp -a "$CACHE/bookworm.layout" "$layout"
  umoci insert --image "$layout:base" --tag v1 "$stage" /
  local entry=() e
  for e in "${ENTRY[@]}"; do entry+=(--config.entrypoint "$e"); done
  umoci config --image "$layout:v1" --os linux --architecture amd64 "${entry[@]}" \
    --config.workingdir /app --config.env PATH=/usr/local/bin:/usr/bin:/bin
  umoci rm --image "$layout:base"
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  rm -rf "$stage" "$layout"
  log "built $app's image ($(du -h "$tar" | cut -f1))"
}

# import_seed NODE_DIR: the four images, into the node's containerd.
import_seed() {
  local line app bin
  local ctr=("$NODE_BINS/ctr" --address "$1/containerd/containerd.sock" -n k8s.io)
  for line in $(seed_app_paths); do
    app=${line%%=*}
    bin=${line#*=}
    build_seed_image "$app" "$bin"
    import "$1" "seed/$(basename "$SEED_TAR" .tar)" "$SEED_IMAGE_PREFIX/$app:v1"
    if [ "$app" = springboot-app ]; then
      # One project, both versions: APP_VERSION of the manifests picks the behaviour.
      "${ctr[@]}" images tag --force "$SEED_IMAGE_PREFIX/$app:v1" "$SEED_IMAGE_PREFIX/$app:v2" >/dev/null
    fi
  done
}
