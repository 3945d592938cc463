#!/usr/bin/env bash
# t_chat_cancel.sh: Ctrl-C (SIGINT) during a `flash-moe chat` turn cancels the turn, prints
# "[cancelled]" and the chat answers the next line as if the cancelled turn never happened;
# SIGINT at the prompt ends the process as before. Deterministic, no timing: stdout is a
# fifo whose buffer the test fills first, so the chat blocks in the write of its first
# answer piece (inside the stream callback, on the demo model with a long pasted prompt),
# and the test sends SIGINT only once /proc/PID/wchan shows it blocked there (pipe_write),
# or in a read of its input for the prompt case.
cd "${FM_ROOT:-.}" || exit 1
BIN=${FM_BIN:-build/flash-moe}
ok() { echo "ok - $*"; }
nok() { echo "not ok - $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else nok "$name"; fi; }
demo=models/demo
if [ ! -f "$demo/config.json" ]; then ok "skipped: no demo model"; exit 0; fi
tmp=$(mktemp -d)
pid=
catpid=
cleanup() {
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    [ -n "$catpid" ] && kill "$catpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap '' PIPE
# bail NAME: reports NAME failed and stops (the later steps depend on it).
bail() { nok "$1"; exit 1; }
# An array, not a function: started with & it must be the flash-moe process itself ($!).
# env --default-signal: a non-interactive shell starts background commands with SIGINT
# ignored; an interactive user's chat has the default action.
chat=(env --default-signal=INT "$BIN" chat "$demo" --cache-dir "" --temp 0 -n 200)
# Waits (at most 60 s, a safety net, not a measurement) until the main thread of $pid
# sleeps in a pipe $1 (read or write): wchan pipe_$1, or anon_pipe_$1 on newer kernels.
wait_in() {
    for _ in $(seq 1 600); do
        case "$(cat "/proc/$pid/wchan" 2>/dev/null)" in pipe_"$1" | anon_pipe_"$1") return 0 ;; esac
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# A long pasted prompt (about 1450 tokens: several prefill chunks) and a short next line.
long=$(for i in $(seq 1 50); do printf 'Sentence %d: the quick brown fox jumps over the lazy dog. ' "$i"; done)
printf 'Hello\n' | "${chat[@]}" >"$tmp/fresh" 2>/dev/null
check "reference: a fresh chat answers Hello with some text" test -s "$tmp/fresh"
printf '%s\n' "$long" | "${chat[@]}" -n 2 >"$tmp/long1" 2>/dev/null
check "reference: the long prompt's answer starts with some text" grep -q '[^[:space:]]' "$tmp/long1"

mkfifo "$tmp/in" "$tmp/out"
exec 3<>"$tmp/out"
# Fill the pipe: non-blocking page writes until it takes no more.
head -c 1048576 /dev/zero | tr '\0' '.' >"$tmp/filler"
dd if="$tmp/filler" of=/dev/fd/3 bs=4096 oflag=nonblock 2>/dev/null
filled=$(dd if="$tmp/filler" of=/dev/fd/3 bs=4096 count=1 oflag=nonblock 2>&1 | grep -c 'Resource temporarily unavailable')
check "the stdout pipe is full before the chat starts" test "$filled" -eq 1
"${chat[@]}" <"$tmp/in" >"$tmp/out" 2>"$tmp/err" 3>&- &
pid=$!
exec 4>"$tmp/in"
printf '%s\n' "$long" >&4
wait_in write || bail "the chat blocks writing its first answer piece"
ok "the chat blocks writing its first answer piece"
kill -INT "$pid"
# Drain: a second reader, then drop the first (read-write) descriptor.
exec 5<"$tmp/out"
exec 3<&-
cat <&5 >"$tmp/got" 4>&- &   # not holding the input fifo open
catpid=$!
exec 5<&-
for _ in $(seq 1 600); do grep -q '^\[cancelled\]$' "$tmp/got" 2>/dev/null && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
grep -q '^\[cancelled\]$' "$tmp/got" && kill -0 "$pid" 2>/dev/null ||
    bail "SIGINT during the turn prints [cancelled] and the chat lives on"
ok "SIGINT during the turn prints [cancelled] and the chat lives on"
printf 'Hello\n' >&4
exec 4>&-
wait "$pid"
rc=$?
pid=
wait "$catpid"
catpid=
check "the chat then exits 0 at the end of input" test "$rc" -eq 0
sed -n '/^\[cancelled\]$/,$p' "$tmp/got" | tail -n +2 >"$tmp/next"
check "the next line is answered as in a fresh chat (the cancelled turn is not kept)" \
    cmp -s "$tmp/next" "$tmp/fresh"
check "stderr says the turn was cancelled" grep -q 'turn cancelled' "$tmp/err"

# SIGINT at the prompt (waiting for input) ends the process, as before.
"${chat[@]}" <"$tmp/in" >/dev/null 2>"$tmp/err2" &
pid=$!
exec 4>"$tmp/in"
wait_in read || bail "the chat waits for input"
ok "the chat waits for input"
kill -INT "$pid"
wait "$pid"
rc=$?
pid=
exec 4>&-
check "SIGINT at the prompt ends the chat (killed by SIGINT: status 130)" test "$rc" -eq 130
