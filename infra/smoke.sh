#!/usr/bin/env bash
# The course's flow, end to end, through the Ingress of a running cluster
# (or anything that applies the same rules, such as `blog up`'s gateway):
#
#   bash infra/smoke.sh                           http://posts.com (the hosts entry)
#   SMOKE_RESOLVE=127.0.0.1 bash infra/smoke.sh   posts.com at that address, no hosts entry
#   bash infra/smoke.sh http://127.0.0.1:8080     another base URL
#
# It loads the client, creates a post, comments on it twice, waits until
# moderation has decided both comments (through the bus), and reads the live
# stream. Needs bash and curl. Exits non-zero on the first failure.
set -euo pipefail

base=${1:-http://posts.com}
base=${base%/}
timeout=${SMOKE_TIMEOUT:-60}
live_seconds=${SMOKE_LIVE_SECONDS:-5}
curl_args=(--silent --show-error --max-time 10)
if [ -n "${SMOKE_RESOLVE:-}" ]; then
  host_port=${base#*://}
  host=${host_port%%[:/]*}
  port=80
  case $host_port in *:*) port=${host_port#*:}; port=${port%%/*} ;; esac
  curl_args+=(--resolve "$host:$port:$SMOKE_RESOLVE")
fi

passed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*" >&2
  printf 'smoke: %d passed, 1 failed\n' "$passed"
  exit 1
}

# request METHOD PATH [JSON]: prints the body, then the status on its own line.
request() {
  local args=("${curl_args[@]}" --request "$1" --write-out '\n%{http_code}')
  if [ $# -ge 3 ]; then
    args+=(--header 'Content-Type: application/json' --data "$3")
  fi
  curl "${args[@]}" "$base$2" || printf '\n000'
}
status_of() { tail -n 1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }

tag="smoke-$(date +%s)-$RANDOM"

# 1. The client, through the catch-all rule.
page=$(request GET /)
[ "$(status_of "$page")" = 200 ] || fail "GET / answered $(status_of "$page")"
grep -qi '<html' <<<"$(body_of "$page")" || fail "GET / is not the client's page"
ok "GET / serves the client"

# 2. A post, through /posts/create (posts).
created=$(request POST /posts/create "{\"title\":\"$tag\"}")
[ "$(status_of "$created")" = 201 ] || fail "POST /posts/create answered $(status_of "$created"): $(body_of "$created")"
id=$(body_of "$created" | sed -n 's/.*"id" *: *"\([^"]*\)".*/\1/p' | head -n 1)
[ -n "$id" ] || fail "POST /posts/create returned no id: $(body_of "$created")"
ok "POST /posts/create made post $id"

# 3. Two comments, through /posts/?(.*)/comments (comments).
for word in orange apple; do
  answer=$(request POST "/posts/$id/comments" "{\"content\":\"$tag-$word\"}")
  [ "$(status_of "$answer")" = 201 ] || fail "POST /posts/$id/comments answered $(status_of "$answer"): $(body_of "$answer")"
  grep -q "\"$tag-$word\"" <<<"$(body_of "$answer")" || fail "the comment is not in the answer: $(body_of "$answer")"
done
ok "POST /posts/$id/comments accepted two comments"

# 4. The read model, through /posts (query): both comments moderated, the
#    one with "orange" rejected (the course's rule), through the bus.
comment() { grep -o "{[^{}]*\"$tag-$1\"[^{}]*}" <<<"$2" | head -n 1 || true; }
deadline=$((SECONDS + timeout))
while :; do
  posts=$(request GET /posts)
  if [ "$(status_of "$posts")" = 200 ]; then
    body=$(body_of "$posts")
    rejected=$(comment orange "$body")
    approved=$(comment apple "$body")
    if grep -q '"status" *: *"rejected"' <<<"$rejected" && grep -q '"status" *: *"approved"' <<<"$approved"; then
      break
    fi
  fi
  [ $SECONDS -lt $deadline ] || fail "GET /posts never showed both comments moderated: $(body_of "$posts")"
  sleep 1
done
grep -q "\"$tag\"" <<<"$body" || fail "GET /posts lacks the post's title"
ok "GET /posts shows the post with one comment rejected and one approved"

# 5. The live stream, through /posts (query): unbuffered server-sent events.
live=$(curl "${curl_args[@]}" --no-buffer --max-time "$live_seconds" --dump-header - \
  --header 'Accept: text/event-stream' "$base/posts/live" || true)
grep -qi '^content-type: *text/event-stream' <<<"$live" || fail "GET /posts/live is not an event stream: $live"
grep -q '^event: *snapshot' <<<"$live" || fail "GET /posts/live sent no snapshot within $live_seconds s (buffered?)"
grep -q "$tag" <<<"$live" || fail "the snapshot lacks the new post"
ok "GET /posts/live streams a snapshot"

printf 'smoke: %d passed, 0 failed\n' "$passed"
