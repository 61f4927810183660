// Replacing a file atomically: write everything to atomic_temp_path(path) in the same folder,
// fsync it, then atomic_commit renames it over `path` and syncs the folder, so a crash at any
// moment leaves either the old file or the complete new one.
#pragma once

// "<path>.tmp.<pid>", malloc'd; NULL when out of memory.
char *atomic_temp_path(const char *path);
// Renames tmp over path, then fsyncs the folder. *renamed tells the caller whether tmp still
// exists (to remove it on failure). VIT_ERR with a message naming path otherwise.
int atomic_commit(const char *tmp, const char *path, int *renamed);
