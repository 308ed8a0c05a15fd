#!/bin/bash
# An example job: counts to five, a second apart, writing its progress as it goes.
for i in 1 2 3 4 5; do
  echo "step $i of 5" > progress.txt
  echo "working on step $i"
  sleep 1
done
echo "Hello from $(hostname) at $(date)" > result.txt
