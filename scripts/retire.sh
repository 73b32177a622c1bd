# Sourced by the benchmarks. `retire PATH...` moves earlier outputs into
# "$trash" instead of deleting them before a run; `clear_retired` (called
# from the script's EXIT trap) deletes them at the end. On ext4 without a
# journal (this project's VMs) creating files in the minutes after
# thousands were deleted is slower: the inode allocator passes over
# recently freed inodes (`recently_deleted`). Over eight back-to-back 10M
# runs that each deleted the last run's lake, gold's file creation grew
# from 2.0 to 4.8 s, and it fell on whichever tool ran after the deletion.
trash="${trash:?set trash (a folder on the same filesystem) before sourcing retire.sh}"
retire() {
  mkdir -p "$trash"
  for f in "$@"; do
    if [ -e "$f" ]; then mv "$f" "$trash/$(date +%s%N)-$(basename "$f")"; fi
  done
}
clear_retired() { rm -rf "$trash"; }
