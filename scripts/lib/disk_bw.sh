# disk_bw.sh: sourced by the benchmark scripts. `disk_bw FILE` measures the O_DIRECT read
# bandwidth of the disk holding FILE (one stream, and four streams over disjoint quarters,
# 4 MiB blocks, at most 512 MiB), sets bw1, bw4 and bw (the larger, bytes/s) and prints a
# "# disk ..." line.
disk_bw() {
    local F=$1 size mib t0 t1
    size=$(stat -c %s "$F")
    mib=$((size / 1048576 / 4 / 4 * 4)); [ $mib -gt 512 ] && mib=512
    bw1=$(dd if="$F" of=/dev/null iflag=direct bs=4M count=$((mib / 4)) 2>&1 |
        awk '/copied/ {for (i = 1; i <= NF; i++) if ($i == "s,") print $1 / $(i - 1)}')
    t0=$(date +%s.%N)
    for k in 0 1 2 3; do
        dd if="$F" of=/dev/null iflag=direct bs=4M skip=$((k * size / 4 / 4194304)) count=$((mib / 4 / 4)) 2>/dev/null &
    done
    wait
    t1=$(date +%s.%N)
    bw4=$(awk -v b=$((4 * (mib / 4 / 4) * 4194304)) -v a="$t0" -v z="$t1" 'BEGIN {print b / (z - a)}')
    bw=$(awk -v a="$bw1" -v b="$bw4" 'BEGIN {print (a > b ? a : b)}')
    awk -v a="$bw1" -v b="$bw4" -v c="$bw" 'BEGIN {printf "# disk (O_DIRECT dd, 4 MiB blocks): 1 stream %.2f GB/s, 4 streams %.2f GB/s -> %.2f GB/s used\n", a/1e9, b/1e9, c/1e9}'
}
