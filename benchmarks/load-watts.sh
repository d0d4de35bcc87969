#!/usr/bin/env bash
# A `command` sensor for machines with no power meter (no RAPL, no NVML, no smart plug): the
# machine's power modelled from its CPU load, read from /proc/stat over 100 ms:
#   watts = WES_IDLE_WATTS + (WES_BUSY_WATTS - WES_IDLE_WATTS) x busy share
# It is a model, not a measurement: J/token from it compares runs on one machine (its
# variance is the protocol's), not machines. Prints one JSON object, as the sensor expects.
set -euo pipefail
idle=${WES_IDLE_WATTS:-20}
busy=${WES_BUSY_WATTS:-65}
read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ </proc/stat
sleep 0.1
read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ </proc/stat
work=$(((u2 + n2 + s2 + q2 + sq2 + st2) - (u1 + n1 + s1 + q1 + sq1 + st1)))
wait_=$(((i2 + w2) - (i1 + w1)))
awk -v w="$work" -v i="$wait_" -v lo="$idle" -v hi="$busy" 'BEGIN {
  share = (w + i) > 0 ? w / (w + i) : 0
  printf "{\"watts\": %.3f}\n", lo + (hi - lo) * share
}'
