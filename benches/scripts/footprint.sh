#!/bin/bash
# Idle memory of a node: RSS and PSS of mechad and its module processes, summed from
# /proc/PID/smaps_rollup 1.5 s after the socket accepts. With USE=1, again after one
# state set and one publish (which start lazy modules).
# usage: footprint.sh BIN_DIR LABEL [CONFIG]   (BENCHMARKS.md, "Lazy modules")
bin=$1; label=$2; cfg=$3
d=$(mktemp -d /tmp/fp.XXXX)
args="--socket $d/m.sock --data-dir $d/data --module-dir $bin"
[ -n "$cfg" ] && args="$args --config $cfg"
$bin/mechad $args > $d/log 2>&1 &
mp=$!
for i in $(seq 100); do [ -S $d/m.sock ] && break; sleep 0.05; done
sleep 1.5
tr=0; tp=0
for p in $mp $(pgrep -P $mp); do
  r=$(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup); s=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)
  tr=$((tr+r)); tp=$((tp+s)); printf "  %-18s rss=%6d KiB pss=%6d KiB\n" $(cat /proc/$p/comm) $r $s
done
echo "$label: processes=$(( $(pgrep -P $mp | wc -l) + 1 )) total RSS=$tr KiB ($(echo "scale=1;$tr/1024"|bc) MiB) PSS=$tp KiB ($(echo "scale=1;$tp/1024"|bc) MiB)"
if [ -n "$USE" ]; then
  MECHA_SOCKET=$d/m.sock $bin/mechactl state set k v >/dev/null
  MECHA_SOCKET=$d/m.sock $bin/mechactl pubsub publish t hello >/dev/null
  sleep 1
  tr=0; tp=0
  for p in $mp $(pgrep -P $mp); do
    r=$(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup); s=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)
    tr=$((tr+r)); tp=$((tp+s))
  done
  echo "$label after a state set and a publish: processes=$(( $(pgrep -P $mp | wc -l) + 1 )) total RSS=$tr KiB ($(echo "scale=1;$tr/1024"|bc) MiB) PSS=$tp KiB ($(echo "scale=1;$tp/1024"|bc) MiB)"
fi
kill $mp; wait $mp 2>/dev/null; rm -rf $d
