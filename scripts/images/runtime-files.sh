#!/bin/sh
# runtime-files.sh OUT PACKAGE...: a distroless-like root filesystem in OUT:
# the files of the installed Debian PACKAGEs (no documentation), merged /usr,
# the CA bundle, the users root, nonroot (65532) and nobody, /tmp and the
# home folders. Run inside runtime.Dockerfile's first stage.
set -eu
out=$1
shift
mkdir -p "$out/usr/bin" "$out/usr/sbin" "$out/usr/lib" "$out/usr/lib64"
for dir in bin sbin lib lib64; do
    ln -s "usr/$dir" "$out/$dir"
done
# Regular files and symbolic links to files; folders come with them.
dpkg -L "$@" \
    | grep -v -e '^/usr/share/doc' -e '^/usr/share/man' -e '^/usr/share/info' \
        -e '^/usr/share/lintian' -e '^/usr/share/locale' -e '^/usr/share/bug' \
    | while read -r path; do
        if [ -f "$path" ] || [ -L "$path" ]; then
            [ -d "$path" ] || printf '%s\n' "${path#/}"
        fi
    done >/tmp/files
echo etc/ssl/certs/ca-certificates.crt >>/tmp/files
sort -u /tmp/files | tar -C / -cf - -T - | tar -C "$out" -xf - --keep-directory-symlink
cat >"$out/etc/passwd" <<'USERS'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
USERS
cat >"$out/etc/group" <<'GROUPS'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUPS
install -d -m 0700 "$out/root"
install -d -m 0700 -o 65532 -g 65532 "$out/home/nonroot"
install -d -m 1777 "$out/tmp"
